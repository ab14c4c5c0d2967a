// Helpers behind the C ABI (dissect_kernels.h): exception-to-status translation with a
// thread-local message, argument checks that throw a message naming the argument, and a
// bounds-checked byte writer/reader for the serialised accumulators.
#pragma once
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "dissect_kernels/common.h"
#include "dissect_kernels/dissect_kernels.h"
#include "dissect_kernels/exact_quantile.h"

namespace dissect_kernels::capi {

// Thrown by the argument checks below: DK_ERR_INVALID_ARGUMENT with this message.
struct ArgError : Error {
  using Error::Error;
};
struct UnsupportedError : Error {
  using Error::Error;
};

void set_error(const std::string& message);
void clear_error();
const char* last_error_message();

// Run f (which may throw); map the exception to a status and remember its message.
template <typename F>
dk_status guarded(const char* fn, F&& f) noexcept {
  try {
    clear_error();
    f();
    return DK_OK;
  } catch (const exact::StateError& e) {
    set_error(std::string(fn) + ": " + e.what());
    return DK_ERR_STATE;
  } catch (const UnsupportedError& e) {
    set_error(std::string(fn) + ": " + e.what());
    return DK_ERR_UNSUPPORTED;
  } catch (const Error& e) {  // ArgError and the core's argument errors
    set_error(std::string(fn) + ": " + e.what());
    return DK_ERR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    set_error(std::string(fn) + ": out of memory");
    return DK_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_error(std::string(fn) + ": internal error: " + e.what());
    return DK_ERR_INTERNAL;
  } catch (...) {
    set_error(std::string(fn) + ": internal error");
    return DK_ERR_INTERNAL;
  }
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw ArgError(message);
}
inline void not_null(const void* p, const char* name) {
  require(p != nullptr, std::string(name) + " must not be NULL");
}
inline void at_least(int64_t v, int64_t lo, const char* name) {
  require(v >= lo, std::string(name) + " must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
}
DType dtype_of(int32_t code, const char* name);
size_t dtype_size(DType dtype);
// Every ids[0..n) in [0, limit); names the first offender.
void ids_in_range(const int32_t* ids, int64_t n, int64_t limit, const char* name, const char* limit_name);
// A float array holds no NaN (the first offender is named).
void no_nan(const void* x, DType dtype, int64_t G, int64_t U, int64_t S, const int64_t* strides, const char* name);

// Append-only byte writer and a reader that refuses to read past the end.
struct Writer {
  std::vector<unsigned char> bytes;
  template <typename T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  template <typename T>
  void put_array(const T* p, int64_t n) {
    const auto* b = reinterpret_cast<const unsigned char*>(p);
    bytes.insert(bytes.end(), b, b + sizeof(T) * static_cast<size_t>(n));
  }
};
struct Reader {
  const unsigned char* p;
  size_t left;
  const char* what;
  template <typename T>
  T get() {
    T v;
    get_array(&v, 1);
    return v;
  }
  template <typename T>
  void get_array(T* out, int64_t n) {
    const size_t need = sizeof(T) * static_cast<size_t>(n);
    require(n >= 0 && need <= left, std::string(what) + ": the buffer is truncated or corrupt");
    std::memcpy(out, p, need);
    p += need;
    left -= need;
  }
};
// Copy a serialised byte string out (see dk_*_serialize's contract).
void emit_bytes(const Writer& w, void* buffer, size_t capacity, size_t* size);

}  // namespace dissect_kernels::capi
