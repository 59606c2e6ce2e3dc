// meshctl_bpf: N-API addon over the system libbpf. Entry point and per-environment state.
#include <bpf/libbpf.h>

#include "common.h"

namespace meshctl {

AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  InstallLibbpfPrint();
  InstallCleanupHook(env);
  InitBpfMap(env, exports);
  InitBpfObject(env, exports);
  InitRingBuffer(env, exports);
  InitTc(env, exports);
  exports.Set("libbpfVersion", Napi::String::New(env, libbpf_version_string()));
  exports.Set("possibleCpus", Napi::Number::New(env, libbpf_num_possible_cpus()));
  return exports;
}

}  // namespace meshctl

static Napi::Object InitMeshctlBpf(Napi::Env env, Napi::Object exports) {
  return meshctl::Init(env, exports);
}

NODE_API_MODULE(meshctl_bpf, InitMeshctlBpf)
