// tc (clsact) attach/detach/query through libbpf's netlink helpers. Filters live in the
// kernel, not in this process: they keep the program running after the process exits.
// Every call can act inside another network namespace (`netns`: a name under /run/netns or a
// path): the calling thread enters it for the duration of the call and returns.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace meshctl {

namespace {

class NetnsGuard {
 public:
  NetnsGuard(Napi::Env env, const std::string& netns) {
    if (netns.empty()) return;
    path_ = netns.find('/') == std::string::npos ? "/run/netns/" + netns : netns;
    original_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (original_ < 0) throw BpfError(env, "netns_enter", "/proc/thread-self/ns/net", errno);
    int target = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      int err = errno;
      close(original_);
      throw BpfError(env, "netns_enter", path_, err);
    }
    int rc = setns(target, CLONE_NEWNET);
    int err = errno;
    close(target);
    if (rc != 0) {
      close(original_);
      throw BpfError(env, "netns_enter", path_, err);
    }
  }

  ~NetnsGuard() {
    if (original_ < 0) return;
    // Failing to return would leave the JS main thread in the wrong namespace for good.
    if (setns(original_, CLONE_NEWNET) != 0) {
      perror("meshctl_bpf: cannot return to the original network namespace");
      abort();
    }
    close(original_);
  }

  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;

 private:
  std::string path_;
  int original_ = -1;
};

struct TcTarget {
  std::string netns;
  std::string ifname;
  int ifindex = 0;
  uint32_t attachPoint = 0;  // BPF_TC_INGRESS / BPF_TC_EGRESS / both
  std::string direction;
  uint32_t priority = 0, handle = 0;
};

TcTarget ParseTarget(Napi::Env env, Napi::Object options, bool allowBoth, uint32_t defaultPrio) {
  TcTarget target;
  target.netns = OptString(options, "netns", "");
  target.ifname = OptString(options, "ifname", "");
  target.ifindex = static_cast<int>(OptUint32(options, "ifindex", 0));
  if (target.ifindex == 0 && target.ifname.empty()) {
    throw Napi::TypeError::New(env, "ifindex or ifname is required");
  }
  target.direction = OptString(options, "direction", allowBoth ? "both" : "");
  if (target.direction == "ingress") {
    target.attachPoint = BPF_TC_INGRESS;
  } else if (target.direction == "egress") {
    target.attachPoint = BPF_TC_EGRESS;
  } else if (allowBoth && target.direction == "both") {
    target.attachPoint = BPF_TC_INGRESS | BPF_TC_EGRESS;
  } else {
    throw Napi::TypeError::New(env, std::string("direction must be 'ingress' or 'egress'") +
                                        (allowBoth ? " or 'both'" : ""));
  }
  target.priority = OptUint32(options, "priority", defaultPrio);
  target.handle = OptUint32(options, "handle", defaultPrio);
  if (target.priority > 0xffff) throw Napi::RangeError::New(env, "priority must be in 1..65535");
  return target;
}

// Called inside the target namespace.
void ResolveIfindex(Napi::Env env, const char* op, TcTarget& target) {
  if (target.ifindex != 0) return;
  unsigned int index = if_nametoindex(target.ifname.c_str());
  if (index == 0) throw BpfError(env, op, target.ifname, errno);
  target.ifindex = static_cast<int>(index);
}

// libbpf prints netlink extack text as "Kernel error message: <text>"; the last one explains.
Napi::Error TcError(Napi::Env env, const std::string& op, const std::string& subject, int err,
                    const LibbpfLogCapture& capture) {
  const std::string marker = "Kernel error message: ";
  const std::string& log = capture.text();
  size_t at = log.rfind(marker);
  std::string reason = ErrnoText(err);
  if (at != std::string::npos) {
    size_t start = at + marker.size();
    size_t end = log.find('\n', start);
    reason += " (kernel: " + log.substr(start, end == std::string::npos ? std::string::npos : end - start) + ")";
  }
  return BpfErrorWithReason(env, op, subject, err, reason);
}

std::string Subject(const TcTarget& target) {
  std::string where = target.ifname.empty() ? "ifindex " + std::to_string(target.ifindex) : target.ifname;
  if (!target.netns.empty()) where += " in netns " + target.netns;
  return target.direction + " of " + where;
}

Napi::Object Describe(Napi::Env env, const TcTarget& target, const struct bpf_tc_opts& opts) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("ifindex", target.ifindex);
  out.Set("direction", target.direction);
  out.Set("priority", opts.priority);
  out.Set("handle", opts.handle);
  out.Set("programId", opts.prog_id);
  // The kernel's name of the program (at most 15 characters), when it can still be read.
  int fd = opts.prog_id != 0 ? bpf_prog_get_fd_by_id(opts.prog_id) : -1;
  if (fd >= 0) {
    struct bpf_prog_info progInfo;
    std::memset(&progInfo, 0, sizeof progInfo);
    uint32_t len = sizeof progInfo;
    if (bpf_obj_get_info_by_fd(fd, &progInfo, &len) == 0) out.Set("programName", std::string(progInfo.name));
    close(fd);
  }
  return out;
}

Napi::Object OptionsArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "options object required");
  return info[0].As<Napi::Object>();
}

// attachTc({ ifindex | ifname, netns?, direction, programFd, priority = 1, handle = 1,
//            replace = true }) -> { ifindex, direction, priority, handle, programId }
Napi::Value AttachTc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object options = OptionsArg(info);
  TcTarget target = ParseTarget(env, options, false, 1);
  int progFd = static_cast<int>(OptUint32(options, "programFd", 0));
  if (progFd <= 0) throw Napi::TypeError::New(env, "programFd must be an open program fd");
  Napi::Value replaceValue = options.Get("replace");
  bool replace = replaceValue.IsUndefined() || replaceValue.ToBoolean().Value();
  if (target.priority == 0 || target.handle == 0) {
    throw Napi::RangeError::New(env, "priority and handle must be non-zero so the filter can be replaced and detached");
  }

  NetnsGuard guard(env, target.netns);
  LibbpfLogCapture capture;  // expected netlink complaints (EEXIST, ENOENT) stay quiet
  ResolveIfindex(env, "tc_attach", target);
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = target.ifindex,
              .attach_point = static_cast<enum bpf_tc_attach_point>(target.attachPoint));
  int rc = bpf_tc_hook_create(&hook);
  if (rc != 0 && rc != -EEXIST) throw TcError(env, "tc_hook_create", Subject(target), rc, capture);
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = progFd, .flags = replace ? static_cast<__u32>(BPF_TC_F_REPLACE) : 0u,
              .handle = target.handle, .priority = target.priority);
  rc = bpf_tc_attach(&hook, &opts);
  if (rc != 0) throw TcError(env, "tc_attach", Subject(target), rc, capture);
  return Describe(env, target, opts);
}

// detachTc({ ifindex | ifname, netns?, direction, priority = 1, handle = 1 }) -> boolean
// (false when no such filter was attached).
Napi::Value DetachTc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TcTarget target = ParseTarget(env, OptionsArg(info), false, 1);
  NetnsGuard guard(env, target.netns);
  LibbpfLogCapture capture;  // expected netlink complaints (EEXIST, ENOENT) stay quiet
  ResolveIfindex(env, "tc_detach", target);
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = target.ifindex,
              .attach_point = static_cast<enum bpf_tc_attach_point>(target.attachPoint));
  LIBBPF_OPTS(bpf_tc_opts, opts, .handle = target.handle, .priority = target.priority);
  int rc = bpf_tc_detach(&hook, &opts);
  if (rc == -ENOENT || rc == -EINVAL) {
    // EINVAL: the clsact qdisc itself is missing, so nothing can be attached.
    return Napi::Boolean::New(env, false);
  }
  if (rc != 0) throw TcError(env, "tc_detach", Subject(target), rc, capture);
  return Napi::Boolean::New(env, true);
}

// queryTc({ ifindex | ifname, netns?, direction, priority = 1, handle = 1 }) -> info | null
Napi::Value QueryTc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TcTarget target = ParseTarget(env, OptionsArg(info), false, 1);
  NetnsGuard guard(env, target.netns);
  LibbpfLogCapture capture;  // expected netlink complaints (EEXIST, ENOENT) stay quiet
  ResolveIfindex(env, "tc_query", target);
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = target.ifindex,
              .attach_point = static_cast<enum bpf_tc_attach_point>(target.attachPoint));
  LIBBPF_OPTS(bpf_tc_opts, opts, .handle = target.handle, .priority = target.priority);
  int rc = bpf_tc_query(&hook, &opts);
  if (rc == -ENOENT || rc == -EINVAL) return env.Null();
  if (rc != 0) throw TcError(env, "tc_query", Subject(target), rc, capture);
  return Describe(env, target, opts);
}

// destroyTcHook({ ifindex | ifname, netns?, direction = 'both' }) -> boolean. 'both' deletes
// the clsact qdisc with every filter on it.
Napi::Value DestroyTcHook(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TcTarget target = ParseTarget(env, OptionsArg(info), true, 0);
  NetnsGuard guard(env, target.netns);
  LibbpfLogCapture capture;  // expected netlink complaints (EEXIST, ENOENT) stay quiet
  ResolveIfindex(env, "tc_hook_destroy", target);
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = target.ifindex,
              .attach_point = static_cast<enum bpf_tc_attach_point>(target.attachPoint));
  int rc = bpf_tc_hook_destroy(&hook);
  if (rc == -ENOENT || rc == -EINVAL) return Napi::Boolean::New(env, false);
  if (rc != 0) throw TcError(env, "tc_hook_destroy", Subject(target), rc, capture);
  return Napi::Boolean::New(env, true);
}

// ifindex(ifname, netns?) -> number
Napi::Value Ifindex(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TcTarget target;
  target.ifname = ArgString(info, 0, "ifname");
  if (info.Length() > 1 && info[1].IsString()) target.netns = info[1].As<Napi::String>().Utf8Value();
  NetnsGuard guard(env, target.netns);
  LibbpfLogCapture capture;  // expected netlink complaints (EEXIST, ENOENT) stay quiet
  ResolveIfindex(env, "ifindex", target);
  return Napi::Number::New(env, target.ifindex);
}

}  // namespace

void InitTc(Napi::Env env, Napi::Object exports) {
  exports.Set("attachTc", Napi::Function::New<AttachTc>(env, "attachTc"));
  exports.Set("detachTc", Napi::Function::New<DetachTc>(env, "detachTc"));
  exports.Set("queryTc", Napi::Function::New<QueryTc>(env, "queryTc"));
  exports.Set("destroyTcHook", Napi::Function::New<DestroyTcHook>(env, "destroyTcHook"));
  exports.Set("ifindex", Napi::Function::New<Ifindex>(env, "ifindex"));
}

}  // namespace meshctl
