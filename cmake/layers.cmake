# Fails when a source file includes a header from a layer above its own. Run by the build (target lathe_layers,
# which every engine library waits for) and by tests/engine/test_layers.c on a tree with a wrong-way include.
#   cmake -DROOT=<source tree> -P cmake/layers.cmake
#
# Layers, lowest first: common < engine/gpu < engine/ops < engine/model < methods < jobs < daemon, client.
# engine/text and engine/audio sit beside engine/ops (all above common, below model). engine/ops/ref holds the CPU references:
# tests and benchmarks use them, production code never does. A quoted include with no folder ("pc.h") is a
# shader or local header and always allowed.
if(NOT ROOT)
  message(FATAL_ERROR "layers.cmake: pass -DROOT=<source tree>")
endif()

set(allowed_common "common")
set(allowed_engine/gpu "common;engine/gpu")
set(allowed_engine/ops "common;engine/gpu;engine/ops")
set(allowed_engine/ops/ref "common;engine/gpu;engine/ops;engine/ops/ref")
set(allowed_engine/text "common;engine/text")
set(allowed_engine/audio "common;engine/audio")
set(allowed_engine/model "common;engine/gpu;engine/ops;engine/text;engine/audio;engine/model")
set(allowed_methods "common;engine/gpu;engine/ops;engine/text;engine/audio;engine/model;methods")
set(allowed_jobs "common;engine/gpu;engine/ops;engine/text;engine/audio;engine/model;methods;jobs")
set(allowed_daemon "common;engine/gpu;engine/ops;engine/text;engine/audio;engine/model;methods;jobs;daemon")
set(allowed_client "common;jobs;client")
# Most specific first: a file belongs to the first layer whose folder holds it.
set(layers engine/ops/ref engine/gpu engine/ops engine/text engine/audio engine/model methods jobs daemon client common)

set(bad "")
foreach(layer ${layers})
  file(GLOB_RECURSE files ${ROOT}/${layer}/*.c ${ROOT}/${layer}/*.h ${ROOT}/${layer}/*.def)
  foreach(f ${files})
    file(RELATIVE_PATH rel ${ROOT} ${f})
    set(owner "")
    foreach(l ${layers})
      string(LENGTH "${l}/" n)
      string(SUBSTRING "${rel}" 0 ${n} head)
      if(head STREQUAL "${l}/")
        set(owner ${l})
        break()
      endif()
    endforeach()
    if(NOT owner STREQUAL layer)
      continue()
    endif()
    file(STRINGS ${f} incs REGEX "^[ \t]*#[ \t]*include[ \t]+\"[^\"]+\"")
    foreach(line ${incs})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]+\"([^\"]+)\".*" "\\1" inc "${line}")
      get_filename_component(dir "${inc}" DIRECTORY)
      if(dir STREQUAL "")
        continue()
      endif()
      # The header's layer: the most specific layer folder that holds it.
      set(target "")
      foreach(l ${layers})
        string(LENGTH "${l}/" n)
        string(SUBSTRING "${inc}" 0 ${n} head)
        if(head STREQUAL "${l}/")
          set(target ${l})
          break()
        endif()
      endforeach()
      if(target STREQUAL "")
        continue() # a system or tests/ header
      endif()
      list(FIND allowed_${layer} ${target} ok)
      if(ok EQUAL -1)
        string(APPEND bad "  ${rel} (layer ${layer}) includes \"${inc}\" from layer ${target}\n")
      endif()
    endforeach()
  endforeach()
endforeach()

if(bad)
  message(FATAL_ERROR "includes point up the layers (allowed: each layer and those below it):\n${bad}")
endif()
