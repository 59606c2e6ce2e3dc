// BpfMap: one map fd. Lookups and updates are synchronous (one syscall each); bulk work goes
// through updateBatch, which falls back to a loop for map types without a batch op.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common.h"

namespace meshctl {

namespace {

constexpr int kEnotsupp = 524;

bool IsPerCpu(uint32_t type) {
  switch (type) {
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE:
      return true;
    default:
      return false;
  }
}

const char* MapTypeName(uint32_t type) {
  const char* name = libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(type));
  return name != nullptr ? name : "unknown";
}

// Only map fds show "map_type:" in their fdinfo; bpf_obj_get() also opens programs and links.
bool IsMapFd(int fd) {
  std::string path = "/proc/self/fdinfo/" + std::to_string(fd);
  FILE* f = fopen(path.c_str(), "re");
  if (f == nullptr) return true;  // cannot tell: let map_info decide
  char line[256];
  bool isMap = false;
  while (fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "map_type:", 9) == 0) {
      isMap = true;
      break;
    }
  }
  fclose(f);
  return isMap;
}

class BpfMap : public Napi::ObjectWrap<BpfMap>, public Closable {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "BpfMap",
        {
            StaticMethod<&BpfMap::OpenPinned>("openPinned"),
            InstanceAccessor<&BpfMap::GetFd>("fd"),
            InstanceAccessor<&BpfMap::GetName>("name"),
            InstanceAccessor<&BpfMap::GetClosed>("closed"),
            InstanceMethod<&BpfMap::Info>("info"),
            InstanceMethod<&BpfMap::Lookup>("lookup"),
            InstanceMethod<&BpfMap::Update>("update"),
            InstanceMethod<&BpfMap::Delete>("delete"),
            InstanceMethod<&BpfMap::NextKey>("nextKey"),
            InstanceMethod<&BpfMap::Keys>("keys"),
            InstanceMethod<&BpfMap::UpdateBatch>("updateBatch"),
            InstanceMethod<&BpfMap::DeleteBatch>("deleteBatch"),
            InstanceMethod<&BpfMap::Dump>("dump"),
            InstanceMethod<&BpfMap::Pin>("pin"),
            InstanceMethod<&BpfMap::Close>("close"),
        });
  }

  // Called as `new BpfMap(external<int fd>)` from C++ only; takes ownership of the fd.
  explicit BpfMap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfMap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(env, "BpfMap cannot be constructed directly: use BpfMap.openPinned() or BpfObject.map()");
    }
    int fd = *info[0].As<Napi::External<int>>().Data();
    struct bpf_map_info mapInfo;
    std::memset(&mapInfo, 0, sizeof mapInfo);
    uint32_t len = sizeof mapInfo;
    if (bpf_obj_get_info_by_fd(fd, &mapInfo, &len) != 0) {
      int err = errno;
      close(fd);
      throw BpfError(env, "map_info", "fd " + std::to_string(fd), err);
    }
    fd_ = fd;
    env_ = env;
    type_ = mapInfo.type;
    id_ = mapInfo.id;
    keySize_ = mapInfo.key_size;
    valueSize_ = mapInfo.value_size;
    maxEntries_ = mapInfo.max_entries;
    flags_ = mapInfo.map_flags;
    name_ = mapInfo.name;
    if (IsPerCpu(type_)) {
      int cpus = libbpf_num_possible_cpus();
      if (cpus <= 0) cpus = 1;
      possibleCpus_ = static_cast<uint32_t>(cpus);
      userValueSize_ = ((valueSize_ + 7) / 8) * 8 * possibleCpus_;
    } else {
      possibleCpus_ = 1;
      userValueSize_ = valueSize_;
    }
    RegisterHandle(env_, this);
  }

  ~BpfMap() override {
    CloseFd();
    UnregisterHandle(env_, this);
  }

  void CloseHandle() override { CloseFd(); }

 private:
  static Napi::Value OpenPinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = ArgString(info, 0, "path");
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) throw BpfError(env, "obj_get", path, errno);
    if (!IsMapFd(fd)) {
      close(fd);
      throw BpfErrorWithReason(env, "obj_get", path, EINVAL, "pinned object is not a map");
    }
    return NewBpfMapFromFd(env, fd);
  }

  void CloseFd() {
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  void RequireOpen(Napi::Env env, const char* op) {
    if (fd_ < 0) throw BpfErrorWithReason(env, op, name_, EBADF, "map is closed");
  }

  void CheckSize(Napi::Env env, const char* op, const char* what, size_t got, size_t want) {
    if (got != want) {
      throw Napi::RangeError::New(env, std::string(op) + " " + name_ + ": " + what + " is " +
                                           std::to_string(got) + " bytes, map " + what +
                                           " size is " + std::to_string(want));
    }
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), fd_ < 0);
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("id", id_);
    out.Set("type", MapTypeName(type_));
    out.Set("typeId", type_);
    out.Set("name", name_);
    out.Set("keySize", keySize_);
    out.Set("valueSize", valueSize_);
    out.Set("userValueSize", userValueSize_);
    out.Set("possibleCpus", possibleCpus_);
    out.Set("maxEntries", maxEntries_);
    out.Set("flags", flags_);
    return out;
  }

  Napi::Value Lookup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_lookup");
    auto key = ArgBuffer(info, 0, "key");
    CheckSize(env, "map_lookup", "key", key.Length(), keySize_);
    Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, userValueSize_);
    if (bpf_map_lookup_elem(fd_, key.Data(), value.Data()) != 0) {
      int err = errno;
      if (err == ENOENT) return env.Null();
      throw BpfError(env, "map_lookup", name_, err);
    }
    return value;
  }

  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_update");
    auto key = ArgBuffer(info, 0, "key");
    auto value = ArgBuffer(info, 1, "value");
    uint64_t flags = 0;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      if (!info[2].IsNumber()) throw Napi::TypeError::New(env, "flags must be a number");
      flags = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
    }
    CheckSize(env, "map_update", "key", key.Length(), keySize_);
    CheckSize(env, "map_update", "value", value.Length(), userValueSize_);
    if (bpf_map_update_elem(fd_, key.Data(), value.Data(), flags) != 0) {
      throw BpfError(env, "map_update", name_, errno);
    }
    return env.Undefined();
  }

  Napi::Value Delete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_delete");
    auto key = ArgBuffer(info, 0, "key");
    CheckSize(env, "map_delete", "key", key.Length(), keySize_);
    if (bpf_map_delete_elem(fd_, key.Data()) != 0) {
      int err = errno;
      if (err == ENOENT) return Napi::Boolean::New(env, false);
      throw BpfError(env, "map_delete", name_, err);
    }
    return Napi::Boolean::New(env, true);
  }

  // nextKey(key | null) -> Buffer | null (null once iteration is done).
  Napi::Value NextKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_next_key");
    const void* prev = nullptr;
    if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined()) {
      auto key = ArgBuffer(info, 0, "key");
      CheckSize(env, "map_next_key", "key", key.Length(), keySize_);
      prev = key.Data();
    }
    Napi::Buffer<uint8_t> next = Napi::Buffer<uint8_t>::New(env, keySize_);
    if (bpf_map_get_next_key(fd_, prev, next.Data()) != 0) {
      int err = errno;
      if (err == ENOENT) return env.Null();
      throw BpfError(env, "map_next_key", name_, err);
    }
    return next;
  }

  // keys() -> Buffer[]; bounded so concurrent deletes (which restart hash iteration) cannot
  // make it loop forever.
  Napi::Value Keys(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_next_key");
    std::vector<uint8_t> cur(keySize_), next(keySize_);
    Napi::Array out = Napi::Array::New(env);
    const uint64_t limit = static_cast<uint64_t>(maxEntries_) * 2 + 16;
    const void* prev = nullptr;
    uint32_t n = 0;
    while (n < limit) {
      if (bpf_map_get_next_key(fd_, prev, next.data()) != 0) {
        int err = errno;
        if (err == ENOENT) break;
        throw BpfError(env, "map_next_key", name_, err);
      }
      out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), next.size()));
      cur.swap(next);
      prev = cur.data();
    }
    return out;
  }

  // updateBatch(keys, values, count, flags?, method?: 'auto' | 'loop') -> { count, batched }
  Napi::Value UpdateBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_update_batch");
    auto keys = ArgBuffer(info, 0, "keys");
    auto values = ArgBuffer(info, 1, "values");
    if (info.Length() < 3 || !info[2].IsNumber()) throw Napi::TypeError::New(env, "count must be a number");
    int64_t count64 = info[2].As<Napi::Number>().Int64Value();
    if (count64 < 0 || count64 > UINT32_MAX) throw Napi::RangeError::New(env, "count must be in 0..2^32-1");
    uint32_t count = static_cast<uint32_t>(count64);
    uint64_t flags = 0;
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      if (!info[3].IsNumber()) throw Napi::TypeError::New(env, "flags must be a number");
      flags = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
    }
    bool loopOnly = false;
    if (info.Length() > 4 && !info[4].IsUndefined()) {
      std::string method = ArgString(info, 4, "method");
      if (method == "loop") {
        loopOnly = true;
      } else if (method != "auto") {
        throw Napi::TypeError::New(env, "method must be 'auto' or 'loop'");
      }
    }
    CheckSize(env, "map_update_batch", "keys", keys.Length(), static_cast<size_t>(keySize_) * count);
    CheckSize(env, "map_update_batch", "values", values.Length(),
              static_cast<size_t>(userValueSize_) * count);
    Napi::Object out = Napi::Object::New(env);
    if (count == 0) {
      out.Set("count", 0);
      out.Set("batched", false);
      return out;
    }
    // The kernel's batch update takes no per-element flag but BPF_F_LOCK (EINVAL otherwise), so
    // NOEXIST/EXIST semantics need the loop.
    if ((flags & ~static_cast<uint64_t>(BPF_F_LOCK)) != 0) loopOnly = true;
    if (!loopOnly && batchSupport_ != kNo) {
      LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags, .flags = 0);
      uint32_t done = count;
      int rc = bpf_map_update_batch(fd_, keys.Data(), values.Data(), &done, &opts);
      if (rc == 0) {
        batchSupport_ = kYes;
        out.Set("count", count);
        out.Set("batched", true);
        return out;
      }
      int err = errno;
      // Map types without a batch op (LPM trie, ...) answer ENOTSUPP/EOPNOTSUPP before touching
      // any element; anything else is a real failure after `done` elements.
      if (!(batchSupport_ == kUnknown && (err == kEnotsupp || err == EOPNOTSUPP))) {
        Napi::Error error = BpfError(env, "map_update_batch", name_, err);
        // count is only meaningful when the kernel moved it (it stays untouched on early EINVAL).
        if (err != EFAULT && done < count) error.Set("count", static_cast<double>(done));
        throw error;
      }
      batchSupport_ = kNo;
    }
    const uint8_t* k = keys.Data();
    const uint8_t* v = values.Data();
    for (uint32_t i = 0; i < count; i++) {
      if (bpf_map_update_elem(fd_, k + static_cast<size_t>(i) * keySize_,
                              v + static_cast<size_t>(i) * userValueSize_, flags) != 0) {
        Napi::Error error = BpfError(env, "map_update_batch", name_, errno);
        error.Set("count", static_cast<double>(i));
        throw error;
      }
    }
    out.Set("count", count);
    out.Set("batched", false);
    return out;
  }

  // deleteBatch(keys, count, method?: 'auto' | 'loop') -> { count, batched }. Keys that are
  // absent are skipped (not an error); `count` says how many were deleted.
  Napi::Value DeleteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_delete_batch");
    auto keys = ArgBuffer(info, 0, "keys");
    if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(env, "count must be a number");
    int64_t count64 = info[1].As<Napi::Number>().Int64Value();
    if (count64 < 0 || count64 > UINT32_MAX) throw Napi::RangeError::New(env, "count must be in 0..2^32-1");
    uint32_t count = static_cast<uint32_t>(count64);
    bool loopOnly = false;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      std::string method = ArgString(info, 2, "method");
      if (method == "loop") {
        loopOnly = true;
      } else if (method != "auto") {
        throw Napi::TypeError::New(env, "method must be 'auto' or 'loop'");
      }
    }
    CheckSize(env, "map_delete_batch", "keys", keys.Length(), static_cast<size_t>(keySize_) * count);
    const uint8_t* k = keys.Data();
    uint32_t deleted = 0, next = 0;
    bool batched = false;
    if (!loopOnly && count > 0 && deleteBatchSupport_ != kNo) {
      LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = 0, .flags = 0);
      while (next < count) {
        uint32_t done = count - next;
        int rc = bpf_map_delete_batch(fd_, k + static_cast<size_t>(next) * keySize_, &done, &opts);
        if (rc == 0) {
          deleted += count - next;
          next = count;
          break;
        }
        int err = errno;
        if (deleteBatchSupport_ == kUnknown && next == 0 && done == 0 && (err == kEnotsupp || err == EOPNOTSUPP)) {
          deleteBatchSupport_ = kNo;
          break;
        }
        if (err != ENOENT || done >= count - next) {
          Napi::Error error = BpfError(env, "map_delete_batch", name_, err);
          error.Set("count", static_cast<double>(deleted + (done < count - next ? done : 0)));
          throw error;
        }
        // The kernel stopped at an absent key: count what went before it and step over it.
        deleteBatchSupport_ = kYes;
        deleted += done;
        next += done + 1;
      }
      if (next >= count) {
        deleteBatchSupport_ = kYes;
        batched = true;
      }
    }
    for (uint32_t i = next; i < count; i++) {
      if (bpf_map_delete_elem(fd_, k + static_cast<size_t>(i) * keySize_) != 0) {
        int err = errno;
        if (err == ENOENT) continue;
        Napi::Error error = BpfError(env, "map_delete_batch", name_, err);
        error.Set("count", static_cast<double>(deleted));
        throw error;
      }
      deleted++;
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("count", deleted);
    out.Set("batched", batched);
    return out;
  }

  // dump() -> { keys, values, count, batched }: every element, packed (count × keySize and
  // count × userValueSize bytes). BPF_MAP_LOOKUP_BATCH where the map type has it, else a
  // get_next_key + lookup loop in native code (bounded like keys(); elements deleted between
  // the two calls are left out).
  Napi::Value Dump(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map_lookup_batch");
    std::vector<uint8_t> keys, values;
    uint32_t total = 0;
    bool batched = false;
    if (lookupBatchSupport_ != kNo) {
      uint32_t chunk = maxEntries_ < 4096 ? (maxEntries_ > 0 ? maxEntries_ : 1) : 4096;
      // The batch token is a bucket index for hash maps and a key for the generic op.
      std::vector<uint8_t> inBatch(keySize_ < 8 ? 8 : keySize_), outBatch(inBatch.size());
      bool first = true, failed = false;
      for (;;) {
        keys.resize(static_cast<size_t>(total + chunk) * keySize_);
        values.resize(static_cast<size_t>(total + chunk) * userValueSize_);
        uint32_t n = chunk;
        LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = 0, .flags = 0);
        int rc = bpf_map_lookup_batch(fd_, first ? nullptr : inBatch.data(), outBatch.data(),
                                      keys.data() + static_cast<size_t>(total) * keySize_,
                                      values.data() + static_cast<size_t>(total) * userValueSize_, &n, &opts);
        int err = rc == 0 ? 0 : errno;
        if (rc != 0 && err != ENOENT) {
          if (first && lookupBatchSupport_ == kUnknown && (err == kEnotsupp || err == EOPNOTSUPP || err == EINVAL)) {
            lookupBatchSupport_ = kNo;
            failed = true;
            break;
          }
          if (err == ENOSPC && n == 0 && chunk < (1u << 24)) {
            chunk *= 2;  // one hash bucket holds more than a chunk
            continue;
          }
          throw BpfError(env, "map_lookup_batch", name_, err);
        }
        total += n;
        first = false;
        inBatch.swap(outBatch);
        if (err == ENOENT) break;
      }
      if (!failed) {
        lookupBatchSupport_ = kYes;
        batched = true;
      } else {
        total = 0;
      }
    }
    if (!batched) {
      std::vector<uint8_t> cur(keySize_), next(keySize_), value(userValueSize_);
      const uint64_t limit = static_cast<uint64_t>(maxEntries_) * 2 + 16;
      const void* prev = nullptr;
      keys.clear();
      values.clear();
      for (uint64_t steps = 0; steps < limit; steps++) {
        if (bpf_map_get_next_key(fd_, prev, next.data()) != 0) {
          int err = errno;
          if (err == ENOENT) break;
          throw BpfError(env, "map_next_key", name_, err);
        }
        if (bpf_map_lookup_elem(fd_, next.data(), value.data()) == 0) {
          keys.insert(keys.end(), next.begin(), next.end());
          values.insert(values.end(), value.begin(), value.end());
          total++;
        } else if (errno != ENOENT) {
          throw BpfError(env, "map_lookup", name_, errno);
        }
        cur.swap(next);
        prev = cur.data();
      }
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), static_cast<size_t>(total) * keySize_));
    out.Set("values", Napi::Buffer<uint8_t>::Copy(env, values.data(), static_cast<size_t>(total) * userValueSize_));
    out.Set("count", total);
    out.Set("batched", batched);
    return out;
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "obj_pin");
    std::string path = ArgString(info, 0, "path");
    if (bpf_obj_pin(fd_, path.c_str()) != 0) throw BpfError(env, "obj_pin", path, errno);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseFd();
    return info.Env().Undefined();
  }

  enum BatchSupport { kUnknown, kYes, kNo };

  napi_env env_ = nullptr;
  int fd_ = -1;
  uint32_t type_ = 0, id_ = 0, keySize_ = 0, valueSize_ = 0, maxEntries_ = 0, flags_ = 0;
  uint32_t userValueSize_ = 0, possibleCpus_ = 1;
  std::string name_;
  BatchSupport batchSupport_ = kUnknown;
  BatchSupport deleteBatchSupport_ = kUnknown;
  BatchSupport lookupBatchSupport_ = kUnknown;
};

}  // namespace

Napi::Object NewBpfMapFromFd(Napi::Env env, int fd) {
  int owned = fd;
  return GetAddonData(env)->bpfMapCtor.New({Napi::External<int>::New(env, &owned)});
}

void InitBpfMap(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = BpfMap::Define(env);
  GetAddonData(env)->bpfMapCtor = Napi::Persistent(ctor);
  exports.Set("BpfMap", ctor);
}

}  // namespace meshctl
