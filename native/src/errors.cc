// Error construction and libbpf log routing.
#include <bpf/libbpf.h>
#include <string.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "common.h"

namespace meshctl {

namespace {
// Kernel-internal "not supported" code that leaks to user space (e.g. map batch ops).
constexpr int kEnotsupp = 524;
// A capture keeps at most this much libbpf output; verifier logs travel separately.
constexpr size_t kMaxCapture = 1 << 20;

thread_local LibbpfLogCapture* tlsCapture = nullptr;
}  // namespace

std::string ErrnoName(int err) {
  if (err < 0) err = -err;
  if (err == kEnotsupp) return "ENOTSUPP";
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  return "E" + std::to_string(err);
}

std::string ErrnoText(int err) {
  if (err < 0) err = -err;
  if (err == kEnotsupp) return "Operation not supported by this kernel object (ENOTSUPP)";
  char buf[256];
  // GNU strerror_r returns the message pointer, which may or may not be buf.
  const char* text = strerror_r(err, buf, sizeof buf);
  return text;
}

Napi::Error BpfErrorWithReason(Napi::Env env, const std::string& op, const std::string& subject,
                               int err, const std::string& reason) {
  if (err < 0) err = -err;
  if (err == 0) err = EIO;  // never report success as a failure cause
  std::string message = op;
  if (!subject.empty()) message += " " + subject;
  message += ": " + reason;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("op", Napi::String::New(env, op));
  return error;
}

Napi::Error BpfError(Napi::Env env, const std::string& op, const std::string& subject, int err) {
  return BpfErrorWithReason(env, op, subject, err, ErrnoText(err));
}

LibbpfLogCapture::LibbpfLogCapture() : previous_(tlsCapture) { tlsCapture = this; }
LibbpfLogCapture::~LibbpfLogCapture() { tlsCapture = previous_; }

void AppendLibbpfLog(const char* line) {
  LibbpfLogCapture* capture = tlsCapture;
  if (capture->text_.size() < kMaxCapture) capture->text_ += line;
}

namespace {
int PrintFromLibbpf(enum libbpf_print_level level, const char* format, va_list args) {
  static const bool debug = std::getenv("MESHCTL_BPF_DEBUG") != nullptr;
  if (level == LIBBPF_DEBUG && !debug) return 0;
  char line[4096];
  int n = vsnprintf(line, sizeof line, format, args);
  if (n < 0) return 0;
  if (tlsCapture != nullptr) {
    AppendLibbpfLog(line);
  } else if (level == LIBBPF_WARN || debug) {
    fputs(line, stderr);  // libbpf's format strings carry their own "libbpf: " prefix
  }
  return n;
}
}  // namespace

void InstallLibbpfPrint() { libbpf_set_print(PrintFromLibbpf); }

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index || !info[index].IsBuffer()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Buffer");
  }
  return info[index].As<Napi::Buffer<uint8_t>>();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index || !info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  }
  return info[index].As<Napi::String>().Utf8Value();
}

uint32_t OptUint32(Napi::Object obj, const char* key, uint32_t fallback) {
  Napi::Value value = obj.Get(key);
  if (value.IsUndefined() || value.IsNull()) return fallback;
  if (!value.IsNumber()) {
    throw Napi::TypeError::New(obj.Env(), std::string(key) + " must be a number");
  }
  double d = value.As<Napi::Number>().DoubleValue();
  if (d < 0 || d > 4294967295.0 || d != static_cast<double>(static_cast<uint32_t>(d))) {
    throw Napi::RangeError::New(obj.Env(), std::string(key) + " must be an integer in 0..2^32-1");
  }
  return static_cast<uint32_t>(d);
}

std::string OptString(Napi::Object obj, const char* key, const std::string& fallback) {
  Napi::Value value = obj.Get(key);
  if (value.IsUndefined() || value.IsNull()) return fallback;
  if (!value.IsString()) {
    throw Napi::TypeError::New(obj.Env(), std::string(key) + " must be a string");
  }
  return value.As<Napi::String>().Utf8Value();
}

}  // namespace meshctl
