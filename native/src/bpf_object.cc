// BpfObject: one libbpf bpf_object (an ELF file with its programs and maps). Opening and
// loading (where the verifier runs) happen on a libuv worker thread behind a Promise.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"

namespace meshctl {

namespace {

constexpr uint32_t kDefaultLogSize = 4u << 20;   // verifier logs of big programs run to MiBs
constexpr uint32_t kMinLogSize = 4096;
constexpr uint32_t kMaxLogSize = 256u << 20;

// libbpf names what failed in its own output: "prog 'name': failed to load: -13",
// "map 'name': failed to create: ...". Returns the name, or "" when there is no such line.
std::string FailedItem(const std::string& libbpfLog, const std::string& kind, const std::string& what) {
  const std::string marker = "': " + what;
  size_t end = libbpfLog.find(marker);
  if (end == std::string::npos) return "";
  const std::string opener = kind + " '";
  size_t start = libbpfLog.rfind(opener, end);
  if (start == std::string::npos) return "";
  start += opener.size();
  if (libbpfLog.find('\n', start) < end) return "";
  return libbpfLog.substr(start, end - start);
}

using MaxEntries = std::vector<std::pair<std::string, uint32_t>>;

class BpfObject : public Napi::ObjectWrap<BpfObject>, public Closable {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BpfObject",
                       {
                           StaticMethod<&BpfObject::Load>("load"),
                           InstanceAccessor<&BpfObject::GetName>("name"),
                           InstanceAccessor<&BpfObject::GetClosed>("closed"),
                           InstanceMethod<&BpfObject::Programs>("programs"),
                           InstanceMethod<&BpfObject::Program>("program"),
                           InstanceMethod<&BpfObject::Maps>("maps"),
                           InstanceMethod<&BpfObject::Map>("map"),
                           InstanceMethod<&BpfObject::Close>("close"),
                       });
  }

  // Constructed from C++ only, with an External holding a loaded bpf_object (ownership moves).
  explicit BpfObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfObject>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(env, "BpfObject cannot be constructed directly: use BpfObject.load()");
    }
    obj_ = info[0].As<Napi::External<struct bpf_object>>().Data();
    name_ = bpf_object__name(obj_);
    env_ = env;
    RegisterHandle(env_, this);
  }

  ~BpfObject() override {
    CloseObject();
    UnregisterHandle(env_, this);
  }

  void CloseHandle() override { CloseObject(); }

 private:
  class LoadWorker : public Napi::AsyncWorker {
   public:
    LoadWorker(Napi::Env env, std::string path, std::string objectName, std::string pinRoot,
               uint32_t logSize, uint32_t logLevel, MaxEntries maxEntries)
        : Napi::AsyncWorker(env, "meshctl:bpf_object_load"),
          deferred_(Napi::Promise::Deferred::New(env)),
          path_(std::move(path)),
          objectName_(std::move(objectName)),
          pinRoot_(std::move(pinRoot)),
          logSize_(logSize),
          logLevel_(logLevel),
          maxEntries_(std::move(maxEntries)) {}

    ~LoadWorker() override {
      if (obj_ != nullptr) bpf_object__close(obj_);
    }

    Napi::Promise Promise() { return deferred_.Promise(); }

   protected:
    void Execute() override {
      LibbpfLogCapture capture;
      std::vector<char> log(logSize_, '\0');
      LIBBPF_OPTS(bpf_object_open_opts, opts);
      opts.object_name = objectName_.empty() ? nullptr : objectName_.c_str();
      opts.pin_root_path = pinRoot_.empty() ? nullptr : pinRoot_.c_str();
      opts.kernel_log_buf = log.data();
      opts.kernel_log_size = log.size();
      opts.kernel_log_level = logLevel_;
      struct bpf_object* obj = bpf_object__open_file(path_.c_str(), &opts);
      if (obj == nullptr) {
        err_ = errno;
        op_ = "open";
        libbpfLog_ = capture.text();
        return;
      }
      // Sizes are part of what libbpf compares when it reuses a pinned map, so they must be set
      // before load; maps the object does not have are skipped (one size table serves every object).
      for (const auto& [name, max] : maxEntries_) {
        struct bpf_map* map = bpf_object__find_map_by_name(obj, name.c_str());
        if (map == nullptr) continue;
        if (bpf_map__set_max_entries(map, max) != 0) {
          err_ = errno;
          op_ = "load";
          failedMap_ = name;
          libbpfLog_ = capture.text();
          bpf_object__close(obj);
          return;
        }
      }
      if (bpf_object__load(obj) != 0) {
        err_ = errno;
        op_ = "load";
        // The buffer holds the last BPF_PROG_LOAD/BPF_BTF_LOAD log, i.e. the failing one.
        verifierLog_.assign(log.data(), strnlen(log.data(), log.size()));
        libbpfLog_ = capture.text();
        bpf_object__close(obj);
        return;
      }
      obj_ = obj;
    }

    void OnOK() override {
      Napi::Env env = Env();
      if (obj_ == nullptr) {
        std::string subject = path_;
        std::string program = FailedItem(libbpfLog_, "prog", "failed to load");
        std::string map = failedMap_.empty() ? FailedItem(libbpfLog_, "map", "failed to create") : failedMap_;
        if (!program.empty()) subject += " (program " + program + ")";
        if (program.empty() && !map.empty()) subject += " (map " + map + ")";
        Napi::Error error = BpfError(env, op_, subject, err_);
        error.Set("path", path_);
        if (!program.empty()) error.Set("program", program);
        if (!map.empty()) error.Set("map", map);
        if (!verifierLog_.empty()) error.Set("verifierLog", verifierLog_);
        error.Set("libbpfLog", libbpfLog_);
        deferred_.Reject(error.Value());
        return;
      }
      struct bpf_object* obj = obj_;
      obj_ = nullptr;
      try {
        Napi::Object wrapped =
            GetAddonData(env)->bpfObjectCtor.New({Napi::External<struct bpf_object>::New(env, obj)});
        deferred_.Resolve(wrapped);
      } catch (const Napi::Error& e) {
        bpf_object__close(obj);
        deferred_.Reject(e.Value());
      }
    }

    void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

   private:
    Napi::Promise::Deferred deferred_;
    std::string path_, objectName_, pinRoot_;
    uint32_t logSize_, logLevel_;
    MaxEntries maxEntries_;
    struct bpf_object* obj_ = nullptr;
    int err_ = 0;
    std::string op_, verifierLog_, libbpfLog_, failedMap_;
  };

  // load(path, { name?, pinRoot?, logSize?, logLevel?, maxEntries?: { [map]: n } }) -> Promise<BpfObject>
  static Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = ArgString(info, 0, "path");
    std::string pinRoot, objectName;
    uint32_t logSize = kDefaultLogSize, logLevel = 0;
    MaxEntries maxEntries;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object options = info[1].As<Napi::Object>();
      objectName = OptString(options, "name", "");
      pinRoot = OptString(options, "pinRoot", "");
      logSize = OptUint32(options, "logSize", kDefaultLogSize);
      logLevel = OptUint32(options, "logLevel", 0);
      Napi::Value sizes = options.Get("maxEntries");
      if (!sizes.IsUndefined() && !sizes.IsNull()) {
        if (!sizes.IsObject()) throw Napi::TypeError::New(env, "maxEntries must be an object of map name -> entries");
        Napi::Object table = sizes.As<Napi::Object>();
        Napi::Array names = table.GetPropertyNames();
        for (uint32_t i = 0; i < names.Length(); i++) {
          std::string name = names.Get(i).ToString().Utf8Value();
          uint32_t max = OptUint32(table, name.c_str(), 0);
          if (max == 0) throw Napi::RangeError::New(env, "maxEntries." + name + " must be a positive integer");
          maxEntries.emplace_back(name, max);
        }
      }
    }
    if (logSize < kMinLogSize || logSize > kMaxLogSize) {
      throw Napi::RangeError::New(env, "logSize must be between 4096 and 268435456 bytes");
    }
    auto* worker = new LoadWorker(env, path, objectName, pinRoot, logSize, logLevel, std::move(maxEntries));
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  }

  void CloseObject() {
    if (obj_ != nullptr) {
      bpf_object__close(obj_);
      obj_ = nullptr;
    }
  }

  void RequireOpen(Napi::Env env, const char* op, const std::string& subject) {
    if (obj_ == nullptr) throw BpfErrorWithReason(env, op, subject, EBADF, "object is closed");
  }

  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), obj_ == nullptr);
  }

  static Napi::Object DescribeProgram(Napi::Env env, struct bpf_program* prog) {
    Napi::Object out = Napi::Object::New(env);
    int fd = bpf_program__fd(prog);
    out.Set("name", bpf_program__name(prog));
    out.Set("section", bpf_program__section_name(prog));
    const char* type = libbpf_bpf_prog_type_str(bpf_program__type(prog));
    out.Set("type", type != nullptr ? type : "unknown");
    out.Set("fd", fd);
    struct bpf_prog_info progInfo;
    std::memset(&progInfo, 0, sizeof progInfo);
    uint32_t len = sizeof progInfo;
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &progInfo, &len) == 0) {
      out.Set("id", progInfo.id);
      char tag[2 * BPF_TAG_SIZE + 1];
      for (int i = 0; i < BPF_TAG_SIZE; i++) snprintf(tag + 2 * i, 3, "%02x", progInfo.tag[i]);
      out.Set("tag", std::string(tag));
    }
    return out;
  }

  Napi::Value Programs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "program", name_);
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    struct bpf_program* prog;
    bpf_object__for_each_program(prog, obj_) { out.Set(i++, DescribeProgram(env, prog)); }
    return out;
  }

  Napi::Value Program(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name = ArgString(info, 0, "name");
    RequireOpen(env, "program", name);
    struct bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
    if (prog == nullptr) {
      throw BpfErrorWithReason(env, "program", name, ENOENT, "no such program in " + name_);
    }
    return DescribeProgram(env, prog);
  }

  Napi::Value Maps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env, "map", name_);
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    struct bpf_map* map;
    bpf_object__for_each_map(map, obj_) {
      Napi::Object entry = Napi::Object::New(env);
      entry.Set("name", bpf_map__name(map));
      entry.Set("internal", bpf_map__is_internal(map));
      const char* pin = bpf_map__pin_path(map);
      entry.Set("pinPath", pin != nullptr && bpf_map__is_pinned(map) ? Napi::Value(Napi::String::New(env, pin))
                                                                     : env.Null());
      out.Set(i++, entry);
    }
    return out;
  }

  // map(name) -> a new BpfMap on a dup()ed fd: it stays valid after this object is closed
  // and must be closed on its own.
  Napi::Value Map(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name = ArgString(info, 0, "name");
    RequireOpen(env, "map", name);
    struct bpf_map* map = bpf_object__find_map_by_name(obj_, name.c_str());
    if (map == nullptr) {
      throw BpfErrorWithReason(env, "map", name, ENOENT, "no such map in " + name_);
    }
    int fd = fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) throw BpfError(env, "map", name, errno);
    return NewBpfMapFromFd(env, fd);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseObject();
    return info.Env().Undefined();
  }

  napi_env env_ = nullptr;
  struct bpf_object* obj_ = nullptr;
  std::string name_;
};

}  // namespace

void InitBpfObject(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = BpfObject::Define(env);
  GetAddonData(env)->bpfObjectCtor = Napi::Persistent(ctor);
  exports.Set("BpfObject", ctor);
}

}  // namespace meshctl
