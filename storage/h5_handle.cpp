#include "storage/h5_handle.h"

#include "common/error.h"
#include "common/log.h"

namespace qforge::storage {

void h5_silence_errors() {
  // Thread-local because the threadsafe libhdf5 keeps one default error stack per thread.
  thread_local bool silenced = false;
  if (silenced) return;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  silenced = true;
}

namespace {

herr_t take_innermost(unsigned n, const H5E_error2_t* err, void* out) {
  // Walking upward, entry 0 is where the error was first detected: the most specific description.
  auto* text = static_cast<std::string*>(out);
  if (err->func_name != nullptr) *text = err->func_name;
  if (err->desc != nullptr && err->desc[0] != '\0') {
    if (!text->empty()) *text += ": ";
    *text += err->desc;
  }
  return 1;  // stop after the first entry
}

const char* close_call_name(H5I_type_t type) {
  switch (type) {
    case H5I_FILE: return "H5Fclose";
    case H5I_GROUP: return "H5Gclose";
    case H5I_DATATYPE: return "H5Tclose";
    case H5I_DATASPACE: return "H5Sclose";
    case H5I_DATASET: return "H5Dclose";
    case H5I_ATTR: return "H5Aclose";
    case H5I_GENPROP_LST: return "H5Pclose";
    default: return "H5Idec_ref";
  }
}

herr_t close_by_type(hid_t id, H5I_type_t type) {
  switch (type) {
    case H5I_FILE: return H5Fclose(id);
    case H5I_GROUP: return H5Gclose(id);
    case H5I_DATATYPE: return H5Tclose(id);
    case H5I_DATASPACE: return H5Sclose(id);
    case H5I_DATASET: return H5Dclose(id);
    case H5I_ATTR: return H5Aclose(id);
    case H5I_GENPROP_LST: return H5Pclose(id);
    case H5I_BADID: return -1;  // not a live identifier (closed twice, or never valid)
    default: return H5Idec_ref(id) < 0 ? -1 : 0;
  }
}

}  // namespace

std::string h5_innermost_error() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, take_innermost, &text);
  return text;
}

void throw_h5_failure(const char* call, const H5Where& where) {
  std::string what = std::string(call) + " failed";
  const std::string detail = h5_innermost_error();
  if (!detail.empty()) what += ": " + detail;
  // flock is unimplemented or refused on some NFS/Lustre mounts; the fix is an environment variable.
  if (detail.find("to lock file") != std::string::npos || detail.find("to lock the file") != std::string::npos) {
    what += " (on NFS/Lustre set HDF5_USE_FILE_LOCKING=FALSE; see storage/FORMAT.md)";
  }
  if (where.input) throw InputError(where.file, where.field, what);
  std::string msg = where.file;
  if (!where.field.empty()) msg += ": " + where.field;
  throw InternalError(msg + ": " + what);
}

void H5Handle::reset(hid_t id) noexcept {
  const hid_t old = std::exchange(id_, id);
  if (old < 0) return;
  try {
    h5_silence_errors();
    const H5I_type_t type = H5Iget_type(old);
    if (close_by_type(old, type) < 0) {
      QF_LOG(Warn) << "HDF5: " << close_call_name(type) << " failed for id " << old << ": "
                   << h5_innermost_error();
    }
  } catch (...) {
    // Logging can allocate; a destructor must not throw, and a leaked id is the lesser harm.
  }
}

void H5Handle::close(const H5Where& where) {
  const hid_t old = std::exchange(id_, H5I_INVALID_HID);
  if (old < 0) return;
  h5_silence_errors();
  const H5I_type_t type = H5Iget_type(old);
  if (close_by_type(old, type) < 0) throw_h5_failure(close_call_name(type), where);
}

}  // namespace qforge::storage
