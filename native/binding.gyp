{
  "targets": [
    {
      "target_name": "meshctl_bpf",
      "sources": [
        "src/addon.cc",
        "src/errors.cc",
        "src/registry.cc",
        "src/bpf_map.cc",
        "src/bpf_object.cc",
        "src/ring_buffer.cc",
        "src/tc.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
