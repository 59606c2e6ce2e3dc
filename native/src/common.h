// Shared declarations for the meshctl_bpf addon: error construction, the per-environment
// registry of open kernel handles, and the constructors other files need.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace meshctl {

// Builds a JS Error whose message is "<op> <subject>: <strerror>" (subject may be empty) and
// which carries errno (positive), code ('ENOENT', ...) and op. `err` may be negative.
Napi::Error BpfError(Napi::Env env, const std::string& op, const std::string& subject, int err);

// Same, with a caller-chosen reason text instead of strerror(err).
Napi::Error BpfErrorWithReason(Napi::Env env, const std::string& op, const std::string& subject,
                               int err, const std::string& reason);

// Errno name for err (positive), e.g. "ENOENT"; "E<number>" when unknown.
std::string ErrnoName(int err);
// strerror() text, with the kernel-internal ENOTSUPP (524) spelled out.
std::string ErrnoText(int err);

// Something holding a kernel handle that the environment cleanup hook must release.
class Closable {
 public:
  virtual ~Closable() = default;
  virtual void CloseHandle() = 0;
};

// Per-environment registry; the cleanup hook closes every handle still registered.
void RegisterHandle(napi_env env, Closable* handle);
void UnregisterHandle(napi_env env, Closable* handle);
void InstallCleanupHook(Napi::Env env);

// Routes libbpf's print callback: while a capture is active on this thread, messages are
// appended to it (bounded); otherwise warnings go to stderr.
class LibbpfLogCapture {
 public:
  LibbpfLogCapture();
  ~LibbpfLogCapture();
  const std::string& text() const { return text_; }

 private:
  friend void AppendLibbpfLog(const char* line);
  std::string text_;
  LibbpfLogCapture* previous_;
};
void InstallLibbpfPrint();

// Class initialisers.
void InitBpfMap(Napi::Env env, Napi::Object exports);
void InitBpfObject(Napi::Env env, Napi::Object exports);
void InitRingBuffer(Napi::Env env, Napi::Object exports);
void InitTc(Napi::Env env, Napi::Object exports);

// Wraps an owned map fd into a new JS BpfMap (takes ownership of fd, also on failure).
Napi::Object NewBpfMapFromFd(Napi::Env env, int fd);

// Per-environment constructor references.
struct AddonData {
  Napi::FunctionReference bpfMapCtor;
  Napi::FunctionReference bpfObjectCtor;
};
AddonData* GetAddonData(Napi::Env env);

// Argument helpers that throw TypeError with the operation name.
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t index, const char* what);
std::string ArgString(const Napi::CallbackInfo& info, size_t index, const char* what);
uint32_t OptUint32(Napi::Object obj, const char* key, uint32_t fallback);
std::string OptString(Napi::Object obj, const char* key, const std::string& fallback);

}  // namespace meshctl
