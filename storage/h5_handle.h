// Thin C++ layer over the HDF5 C API: an RAII owner for hid_t and checked calls that turn HDF5's
// negative return codes into qforge exceptions.
//
// Why not HDF5's C++ API: Debian ships it as a separate library whose exceptions carry no file name,
// and the C API is all the activation cache needs.
//
// Errors: HDF5 reports failure with a negative return value and, by default, prints its whole error
// stack to stderr. That printing is turned off (per thread: Debian's libhdf5 is the threadsafe build,
// where the error-stack settings are thread-local) and the innermost entry of the stack, which is
// the most specific ("truncated file: eof = ...", "unable to open file: ... errno = 2"), goes into
// the exception message instead.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>

namespace qforge::storage {

// Turns off HDF5's automatic error-stack printing for the calling thread (idempotent, cheap).
// h5_checked() and H5Handle call it; code that calls HDF5 only through QF_H5 needs nothing else.
void h5_silence_errors();

// The innermost (most specific) description on the calling thread's HDF5 error stack,
// "<function>: <description>", or "" when the stack is empty.
std::string h5_innermost_error();

// What a failing call was working on, for the message. `input` says whose fault a failure is: true
// for a file the user or the job handed us (a malformed file is bad input, InputError, exit code 2),
// false for files qforge is writing or has just validated (InternalError).
struct H5Where {
  std::string file;
  std::string field;  // attribute or dataset involved; "" for the file as a whole
  bool input = false;
};

// Throws InputError(file, field, "<call> failed: <innermost HDF5 error>") or InternalError with the
// same text, per where.input.
[[noreturn]] void throw_h5_failure(const char* call, const H5Where& where);

// Returns rc, or throws when it is negative (hid_t, herr_t and htri_t all signal failure that way).
template <typename T>
T h5_checked(T rc, const char* call, const H5Where& where) {
  if (rc < 0) throw_h5_failure(call, where);
  return rc;
}

// Owns one HDF5 identifier (file, dataset, dataspace, datatype, attribute, property list, group).
// Move-only. The destructor closes it with the H5?close that matches H5Iget_type and never throws:
// a failed close there is logged (QF_LOG(Warn)). Where a close failure matters (closing a file that
// was written flushes it), call close() instead, which throws. Do not wrap predefined identifiers
// such as H5T_NATIVE_FLOAT or H5P_DEFAULT: they are not ours to close.
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(hid_t id) : id_(id) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  H5Handle& operator=(H5Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;

  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  // Gives up ownership without closing.
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }
  // Closes the held identifier (logging a failure) and holds `id` instead.
  void reset(hid_t id = H5I_INVALID_HID) noexcept;
  // Closes now; a failure throws like a checked call (the handle is empty afterwards either way).
  void close(const H5Where& where);

 private:
  hid_t id_ = H5I_INVALID_HID;
};

}  // namespace qforge::storage

// Checked HDF5 call: QF_H5(where, H5Dopen2, file, "/activations", H5P_DEFAULT) calls
// H5Dopen2(file, "/activations", H5P_DEFAULT) and throws (naming "H5Dopen2" and where.file) when it
// returns a negative value; otherwise evaluates to the returned value.
#define QF_H5(where, fn, ...) ::qforge::storage::h5_checked(((void)::qforge::storage::h5_silence_errors(), fn(__VA_ARGS__)), #fn, (where))
