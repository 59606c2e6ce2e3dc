// RingBuffer: consumes a BPF_MAP_TYPE_RINGBUF map on its own thread and hands each record to a
// JS callback as a Buffer copy, through a ThreadSafeFunction. The thread sleeps in epoll on
// libbpf's ring epoll fd plus an eventfd, so close() wakes it at once instead of after a poll
// timeout.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "common.h"

namespace meshctl {

namespace {

using Record = std::vector<uint8_t>;
using Batch = std::vector<Record>;

// Shared between the JS thread and batches still queued in the ThreadSafeFunction; freed by the
// TSFN finalizer, which runs after the last queued batch. Once `closed` is set, queued batches
// are dropped, so no callback runs after close() returns.
struct DeliveryState {
  std::atomic<bool> closed{false};
};

class RingBuffer : public Napi::ObjectWrap<RingBuffer>, public Closable {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingBuffer",
                       {
                           InstanceAccessor<&RingBuffer::GetClosed>("closed"),
                           InstanceAccessor<&RingBuffer::GetRecords>("records"),
                           InstanceMethod<&RingBuffer::Close>("close"),
                           InstanceMethod<&RingBuffer::RefJs>("ref"),
                           InstanceMethod<&RingBuffer::UnrefJs>("unref"),
                       });
  }

  // new RingBuffer(mapFd, onRecord(buffer)); the map fd is dup()ed, the caller keeps its own.
  explicit RingBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingBuffer>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "RingBuffer(mapFd: number, onRecord: (record: Buffer) => void)");
    }
    int mapFd = info[0].As<Napi::Number>().Int32Value();
    struct bpf_map_info mapInfo;
    std::memset(&mapInfo, 0, sizeof mapInfo);
    uint32_t len = sizeof mapInfo;
    if (bpf_obj_get_info_by_fd(mapFd, &mapInfo, &len) != 0) {
      throw BpfError(env, "ringbuf_open", "fd " + std::to_string(mapFd), errno);
    }
    name_ = mapInfo.name;
    if (mapInfo.type != BPF_MAP_TYPE_RINGBUF) {
      throw BpfErrorWithReason(env, "ringbuf_open", name_, EINVAL, "map is not a BPF_MAP_TYPE_RINGBUF");
    }
    mapFd_ = fcntl(mapFd, F_DUPFD_CLOEXEC, 0);
    if (mapFd_ < 0) throw BpfError(env, "ringbuf_open", name_, errno);
    rb_ = ring_buffer__new(mapFd_, &RingBuffer::OnSample, this, nullptr);
    if (rb_ == nullptr) {
      int err = errno;
      ReleaseFds();
      throw BpfError(env, "ringbuf_open", name_, err);
    }
    wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epollFd_ = epoll_create1(EPOLL_CLOEXEC);
    if (wakeFd_ < 0 || epollFd_ < 0) {
      int err = errno;
      ReleaseFds();
      throw BpfError(env, "ringbuf_open", name_, err);
    }
    struct epoll_event ev;
    std::memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u32 = kRing;
    int rc = epoll_ctl(epollFd_, EPOLL_CTL_ADD, ring_buffer__epoll_fd(rb_), &ev);
    ev.data.u32 = kWake;
    if (rc == 0) rc = epoll_ctl(epollFd_, EPOLL_CTL_ADD, wakeFd_, &ev);
    if (rc != 0) {
      int err = errno;
      ReleaseFds();
      throw BpfError(env, "ringbuf_open", name_, err);
    }
    // Unbounded queue: the consumer thread never blocks on JS, so close() can always join it.
    state_ = new DeliveryState();
    tsfn_ = Tsfn::New(env, info[1].As<Napi::Function>(), "meshctl:ringbuf", 0, 1, state_,
                      [](Napi::Env, void*, DeliveryState* state) { delete state; });
    env_ = env;
    // While open, the JS object must not be collected out from under the consumer thread.
    Ref();
    open_ = true;
    RegisterHandle(env_, this);
    thread_ = std::thread([this]() { Run(); });
  }

  ~RingBuffer() override {
    Stop();
    UnregisterHandle(env_, this);
  }

  void CloseHandle() override { Stop(); }

 private:
  static constexpr uint32_t kRing = 1, kWake = 2;

  static int OnSample(void* ctx, void* data, size_t size) {
    auto* self = static_cast<RingBuffer*>(ctx);
    const auto* bytes = static_cast<const uint8_t*>(data);
    self->pending_.emplace_back(bytes, bytes + size);
    return 0;
  }

  static void CallJs(Napi::Env env, Napi::Function callback, DeliveryState* state, Batch* batch) {
    if (env != nullptr && callback != nullptr) {
      for (const Record& record : *batch) {
        if (state->closed.load()) break;  // close() may be called from inside the callback
        try {
          callback.Call({Napi::Buffer<uint8_t>::Copy(env, record.data(), record.size())});
        } catch (const Napi::Error& e) {
          // A throwing callback is the application's bug: surface it as an uncaught exception.
          napi_fatal_exception(env, e.Value());
          break;
        }
      }
    }
    delete batch;
  }

  void Run() {
    struct epoll_event events[2];
    while (!stopping_.load()) {
      int n = epoll_wait(epollFd_, events, 2, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (stopping_.load()) break;
      int consumed = ring_buffer__consume(rb_);
      if (consumed < 0) break;
      if (!pending_.empty()) {
        records_.fetch_add(pending_.size());
        auto* batch = new Batch(std::move(pending_));
        pending_.clear();
        if (tsfn_.NonBlockingCall(batch) != napi_ok) {
          delete batch;
          break;
        }
      }
    }
  }

  void ReleaseFds() {
    if (rb_ != nullptr) {
      ring_buffer__free(rb_);
      rb_ = nullptr;
    }
    if (epollFd_ >= 0) close(epollFd_);
    if (wakeFd_ >= 0) close(wakeFd_);
    if (mapFd_ >= 0) close(mapFd_);
    epollFd_ = wakeFd_ = mapFd_ = -1;
  }

  void Stop() {
    if (!open_) return;
    open_ = false;
    stopping_.store(true);
    uint64_t one = 1;
    ssize_t ignored = write(wakeFd_, &one, sizeof one);
    (void)ignored;
    if (thread_.joinable()) thread_.join();
    ReleaseFds();
    state_->closed.store(true);
    state_ = nullptr;  // owned by the TSFN finalizer from here
    tsfn_.Release();
    Unref();
  }

  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !open_); }
  Napi::Value GetRecords(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(records_.load()));
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Stop();
    return info.Env().Undefined();
  }

  Napi::Value RefJs(const Napi::CallbackInfo& info) {
    if (open_) tsfn_.Ref(info.Env());
    return info.This();
  }

  Napi::Value UnrefJs(const Napi::CallbackInfo& info) {
    if (open_) tsfn_.Unref(info.Env());
    return info.This();
  }

  napi_env env_ = nullptr;
  std::string name_;
  int mapFd_ = -1, wakeFd_ = -1, epollFd_ = -1;
  struct ring_buffer* rb_ = nullptr;
  using Tsfn = Napi::TypedThreadSafeFunction<DeliveryState, Batch, &RingBuffer::CallJs>;
  DeliveryState* state_ = nullptr;
  Tsfn tsfn_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> records_{0};
  bool open_ = false;
  Batch pending_;  // touched only by the consumer thread
};

}  // namespace

void InitRingBuffer(Napi::Env env, Napi::Object exports) {
  exports.Set("RingBuffer", RingBuffer::Define(env));
}

}  // namespace meshctl
