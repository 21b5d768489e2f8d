# Finds ONNX Runtime's C/C++ API and defines the target glsnet_onnxruntime. The documented ways come first:
#  1. -DONNXRUNTIME_ROOT=DIR: an official ONNX Runtime release folder or a JetPack/system install (include/, lib/);
#  2. find_package(onnxruntime): an installed ONNX Runtime CMake package (target onnxruntime::onnxruntime);
#  3. the system's libonnxruntime-dev (onnxruntime_cxx_api.h and libonnxruntime.so on the default paths);
#  4. the fallback this repository's CI uses: ORT_INCLUDE_DIR (headers, fetch_ort_headers.sh) with ORT_LIBRARY
#     (the Python onnxruntime wheel's libonnxruntime.so.1.*, which ships no unversioned link).
# Sets GLSNET_ORT_FOUND_BY (which way won) and GLSNET_ORT_LIBRARY_FILE (the library file, for installing beside
# libglsnet when it lives in no system folder).
set(ONNXRUNTIME_ROOT "" CACHE PATH "ONNX Runtime install or release folder (include/ and lib/); searched first")
set(ORT_INCLUDE_DIR "" CACHE PATH "Fallback: ONNX Runtime headers (fetch_ort_headers.sh puts them in BUILD/ort/include)")
set(ORT_LIBRARY "" CACHE FILEPATH "Fallback: libonnxruntime.so.1.* (the venv's onnxruntime wheel: onnxruntime/capi/)")

set(_ort_header_suffixes include include/onnxruntime include/onnxruntime/core/session onnxruntime onnxruntime/core/session)

function(_glsnet_ort_imported include_dir library)
  add_library(glsnet_onnxruntime SHARED IMPORTED GLOBAL)
  set_target_properties(glsnet_onnxruntime PROPERTIES IMPORTED_LOCATION "${library}" INTERFACE_INCLUDE_DIRECTORIES "${include_dir}")
  get_filename_component(name "${library}" NAME)
  if(name MATCHES "^libonnxruntime\\.so\\.1(\\..*)?$")
    set_target_properties(glsnet_onnxruntime PROPERTIES IMPORTED_SONAME "libonnxruntime.so.1")
  endif()
endfunction()

if(ONNXRUNTIME_ROOT)
  find_path(GLSNET_ORT_ROOT_INCLUDE onnxruntime_cxx_api.h PATHS "${ONNXRUNTIME_ROOT}" PATH_SUFFIXES ${_ort_header_suffixes}
            NO_DEFAULT_PATH)
  find_library(GLSNET_ORT_ROOT_LIBRARY NAMES onnxruntime PATHS "${ONNXRUNTIME_ROOT}" PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
  if(NOT GLSNET_ORT_ROOT_INCLUDE OR NOT GLSNET_ORT_ROOT_LIBRARY)
    message(FATAL_ERROR "ONNXRUNTIME_ROOT=${ONNXRUNTIME_ROOT} has no include/onnxruntime_cxx_api.h (or include/onnxruntime/) "
                        "and lib/libonnxruntime.so: point it at an ONNX Runtime release or install folder")
  endif()
  _glsnet_ort_imported("${GLSNET_ORT_ROOT_INCLUDE}" "${GLSNET_ORT_ROOT_LIBRARY}")
  set(GLSNET_ORT_FOUND_BY "ONNXRUNTIME_ROOT (${ONNXRUNTIME_ROOT})")
  set(GLSNET_ORT_LIBRARY_FILE "${GLSNET_ORT_ROOT_LIBRARY}")
else()
  find_package(onnxruntime CONFIG QUIET)
  if(TARGET onnxruntime::onnxruntime)
    add_library(glsnet_onnxruntime INTERFACE IMPORTED GLOBAL)
    target_link_libraries(glsnet_onnxruntime INTERFACE onnxruntime::onnxruntime)
    # Some packages put the headers in include/onnxruntime/ but name include/ only.
    get_target_property(_ort_dirs onnxruntime::onnxruntime INTERFACE_INCLUDE_DIRECTORIES)
    foreach(dir IN LISTS _ort_dirs)
      if(EXISTS "${dir}/onnxruntime/onnxruntime_cxx_api.h")
        target_include_directories(glsnet_onnxruntime INTERFACE "${dir}/onnxruntime")
      endif()
    endforeach()
    set(GLSNET_ORT_FOUND_BY "find_package(onnxruntime) (${onnxruntime_DIR})")
    set(GLSNET_ORT_LIBRARY_FILE "")
  else()
    find_path(GLSNET_ORT_SYSTEM_INCLUDE onnxruntime_cxx_api.h PATH_SUFFIXES onnxruntime onnxruntime/core/session)
    find_library(GLSNET_ORT_SYSTEM_LIBRARY NAMES onnxruntime)
    if(GLSNET_ORT_SYSTEM_INCLUDE AND GLSNET_ORT_SYSTEM_LIBRARY)
      _glsnet_ort_imported("${GLSNET_ORT_SYSTEM_INCLUDE}" "${GLSNET_ORT_SYSTEM_LIBRARY}")
      set(GLSNET_ORT_FOUND_BY "the system (${GLSNET_ORT_SYSTEM_LIBRARY})")
      set(GLSNET_ORT_LIBRARY_FILE "")
    elseif(ORT_INCLUDE_DIR AND ORT_LIBRARY)
      if(NOT EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_cxx_api.h")
        message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} has no onnxruntime_cxx_api.h; run runtime/cpp/build.sh")
      endif()
      if(NOT EXISTS "${ORT_LIBRARY}")
        message(FATAL_ERROR "ORT_LIBRARY=${ORT_LIBRARY} not found; pass the venv's onnxruntime/capi/libonnxruntime.so.1.*")
      endif()
      # The wheel ships only the versioned file; the SONAME's link lives in the build folder.
      set(_ort_link_dir "${CMAKE_BINARY_DIR}/ort/lib")
      file(MAKE_DIRECTORY "${_ort_link_dir}")
      file(CREATE_LINK "${ORT_LIBRARY}" "${_ort_link_dir}/libonnxruntime.so.1" SYMBOLIC)
      file(CREATE_LINK "${ORT_LIBRARY}" "${_ort_link_dir}/libonnxruntime.so" SYMBOLIC)
      _glsnet_ort_imported("${ORT_INCLUDE_DIR}" "${_ort_link_dir}/libonnxruntime.so.1")
      set(GLSNET_ORT_FOUND_BY "the fallback ORT_INCLUDE_DIR + ORT_LIBRARY (${ORT_LIBRARY})")
      set(GLSNET_ORT_LIBRARY_FILE "${ORT_LIBRARY}")
    else()
      message(FATAL_ERROR "ONNX Runtime not found. Pass -DONNXRUNTIME_ROOT=<release or install folder>, install an "
                          "ONNX Runtime CMake package or libonnxruntime-dev, or run runtime/cpp/build.sh (the venv's wheel)")
    endif()
  endif()
endif()
message(STATUS "ONNX Runtime: ${GLSNET_ORT_FOUND_BY}")
