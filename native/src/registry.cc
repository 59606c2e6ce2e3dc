// Per-environment registry of open handles, closed by the environment cleanup hook so a
// process (or worker) exits cleanly even when JS forgot to call close().
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace meshctl {

namespace {
std::mutex registryMutex;
// Keyed by env so worker threads that load the addon each get their own set; entries outlive
// a torn-down env only until its cleanup hook erases them.
std::unordered_map<napi_env, std::set<Closable*>>& Registry() {
  static auto* registry = new std::unordered_map<napi_env, std::set<Closable*>>();
  return *registry;
}

void CleanupEnv(napi_env env) {
  std::vector<Closable*> open;
  {
    std::lock_guard<std::mutex> lock(registryMutex);
    auto it = Registry().find(env);
    if (it == Registry().end()) return;
    open.assign(it->second.begin(), it->second.end());
    Registry().erase(it);
  }
  for (Closable* handle : open) handle->CloseHandle();
}
}  // namespace

void RegisterHandle(napi_env env, Closable* handle) {
  std::lock_guard<std::mutex> lock(registryMutex);
  Registry()[env].insert(handle);
}

void UnregisterHandle(napi_env env, Closable* handle) {
  std::lock_guard<std::mutex> lock(registryMutex);
  auto it = Registry().find(env);
  if (it != Registry().end()) it->second.erase(handle);
}

void InstallCleanupHook(Napi::Env env) {
  napi_env raw = env;
  env.AddCleanupHook([raw]() { CleanupEnv(raw); });
}

}  // namespace meshctl
