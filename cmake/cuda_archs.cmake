# CUDA architectures for the kernels, chosen before enable_language(CUDA), in this order:
#   DK_CUDA_ARCHS in the environment (also read through setup.py), e.g. "80;90" or "86,89";
#   -DCMAKE_CUDA_ARCHITECTURES=... given by the user (CMake's own knob, used as given);
#   else DK_CUDA_ARCHS_DEFAULT (80;86;89;90).
# A DK_CUDA_ARCHS list becomes SASS for each entry plus PTX for the last (JIT on newer GPUs).
# Numeric architectures below 80 are refused: the kernels use sm_80 warp intrinsics
# (__reduce_add_sync, __match_any_sync).
function(dk_arch_list input out)
  string(REPLACE "," ";" archs "${input}")
  list(LENGTH archs n)
  math(EXPR last "${n} - 1")
  set(result "")
  foreach(i RANGE ${last})
    list(GET archs ${i} a)
    string(STRIP "${a}" a)
    if(i EQUAL last OR a MATCHES "-(real|virtual)$")
      list(APPEND result "${a}")         # the newest: SASS + PTX
    else()
      list(APPEND result "${a}-real")    # SASS only
    endif()
  endforeach()
  set(${out} "${result}" PARENT_SCOPE)
endfunction()

# Whether the cached value is ours (or CMake's compiler default from an older configure), so a
# user's -DCMAKE_CUDA_ARCHITECTURES is told apart from what this file set last time.
get_property(_dk_help CACHE CMAKE_CUDA_ARCHITECTURES PROPERTY HELPSTRING)
set(_dk_ours FALSE)
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR _dk_help STREQUAL "CUDA architectures"
   OR "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "${DK_CUDA_ARCHS_APPLIED}")
  set(_dk_ours TRUE)
endif()
if(NOT "$ENV{DK_CUDA_ARCHS}" STREQUAL "")
  dk_arch_list("$ENV{DK_CUDA_ARCHS}" _dk_archs)
elseif(_dk_ours)
  dk_arch_list("${DK_CUDA_ARCHS_DEFAULT}" _dk_archs)
endif()
if(DEFINED _dk_archs)
  set(CMAKE_CUDA_ARCHITECTURES "${_dk_archs}" CACHE STRING "CUDA architectures (dissect_kernels: DK_CUDA_ARCHS)" FORCE)
  set(DK_CUDA_ARCHS_APPLIED "${_dk_archs}" CACHE INTERNAL "CUDA architectures cmake/cuda_archs.cmake set")
endif()

foreach(_a IN LISTS CMAKE_CUDA_ARCHITECTURES)
  if(_a MATCHES "^([0-9]+)" AND CMAKE_MATCH_1 LESS 80)
    message(FATAL_ERROR "dissect_kernels: CUDA architecture '${_a}' is below the minimum, sm_80 (compute "
      "capability 8.0; the kernels use __reduce_add_sync and __match_any_sync). Set DK_CUDA_ARCHS or "
      "CMAKE_CUDA_ARCHITECTURES to 80 or newer, e.g. DK_CUDA_ARCHS=80;86;89;90.")
  endif()
endforeach()
