#include "common/mpi_comm.h"

#include <cstdlib>
#include <thread>

#include "common/log.h"

namespace qforge {

namespace {

int world_rank_or_minus_one() {
  int init = 0, fin = 0, rank = -1;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

}  // namespace

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  throw CommError(std::string(call) + " failed on rank " + std::to_string(world_rank_or_minus_one()) + " (" +
                 std::string(text, static_cast<std::size_t>(len)) + ") at " + file + ":" + std::to_string(line));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  QF_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    throw InternalError("this MPI library does not provide MPI_THREAD_MULTIPLE (the coordinator and heartbeat threads need it)");
  }
  // World errors come back as codes too, so even start-up failures are reported with context.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  QF_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  QF_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  MPI_Comm node = MPI_COMM_NULL;
  QF_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
}

MpiSession::~MpiSession() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

void MpiSession::abort(int exit_code) {
  std::fflush(stderr);
  std::fflush(stdout);
  // Alone there is no peer to take down: exit without MPI_Abort's banner (the error is already logged).
  int size = 0, initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size <= 1) std::_Exit(exit_code);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

MpiComm MpiComm::duplicate(MPI_Comm parent) {
  MpiComm c;
  QF_MPI_CHECK(MPI_Comm_dup(parent, &c.comm_));
  QF_MPI_CHECK(MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_RETURN));
  QF_MPI_CHECK(MPI_Comm_rank(c.comm_, &c.rank_));
  QF_MPI_CHECK(MPI_Comm_size(c.comm_, &c.size_));
  return c;
}

MpiComm::~MpiComm() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (comm_ != MPI_COMM_NULL && !fin) MPI_Comm_free(&comm_);
}

MpiComm::MpiComm(MpiComm&& o) noexcept : comm_(o.comm_), rank_(o.rank_), size_(o.size_) { o.comm_ = MPI_COMM_NULL; }

MpiComm& MpiComm::operator=(MpiComm&& o) noexcept {
  if (this != &o) {
    this->~MpiComm();
    comm_ = o.comm_;
    rank_ = o.rank_;
    size_ = o.size_;
    o.comm_ = MPI_COMM_NULL;
  }
  return *this;
}

MpiComm MpiComm::split(int color, int key) const {
  MpiComm c;
  QF_MPI_CHECK(MPI_Comm_split(comm_, color, key, &c.comm_));
  QF_MPI_CHECK(MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_RETURN));
  QF_MPI_CHECK(MPI_Comm_rank(c.comm_, &c.rank_));
  QF_MPI_CHECK(MPI_Comm_size(c.comm_, &c.size_));
  return c;
}

void MpiComm::send(int dest, int tag, const std::string& bytes) const {
  // Control messages are small; a synchronous-mode send is not needed and MPI_Send buffers them eagerly.
  QF_MPI_CHECK(MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dest, tag, comm_));
}

std::optional<std::pair<int, std::string>> MpiComm::try_recv(int source, int tag) const {
  if (source == kAnySource) source = MPI_ANY_SOURCE;
  // Mprobe/Mrecv: with several threads receiving on one communicator, a plain Iprobe + Recv pair could
  // have its message taken by another thread in between.
  int flag = 0;
  MPI_Message msg;
  MPI_Status st;
  QF_MPI_CHECK(MPI_Improbe(source, tag, comm_, &flag, &msg, &st));
  if (!flag) return std::nullopt;
  int count = 0;
  QF_MPI_CHECK(MPI_Get_count(&st, MPI_BYTE, &count));
  std::string bytes(static_cast<std::size_t>(count), '\0');
  QF_MPI_CHECK(MPI_Mrecv(bytes.data(), count, MPI_BYTE, &msg, &st));
  return std::make_pair(st.MPI_SOURCE, std::move(bytes));
}

void MpiComm::all_reduce(void* data, std::int64_t n, MPI_Datatype type, MPI_Op op, Timeout timeout,
                         const std::string& what, const Poll& poll) const {
  if (size_ == 1) return;  // nothing to combine; also keeps the one-rank path free of MPI traffic
  QF_CHECK(n <= INT32_MAX, "all-reduce message too large");
  MPI_Request req;
  QF_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), type, op, comm_, &req));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int done = 0;
  for (int spins = 0;; ++spins) {
    QF_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (poll) poll();
    if (std::chrono::steady_clock::now() > deadline) {
      // The request cannot be cancelled; the caller ends the job (the coordinator names the lost rank).
      throw CommError(what + ": all-reduce over " + std::to_string(size_) + " ranks did not complete within " +
                     std::to_string(static_cast<int>(timeout.count())) + " s (a peer is stopped or gone)");
    }
    // Spin briefly for the common fast case, then back off so a waiting rank does not burn a core.
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void MpiComm::all_reduce_sum(float* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const {
  all_reduce(d, n, MPI_FLOAT, MPI_SUM, t, w, p);
}
void MpiComm::all_reduce_sum(double* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const {
  all_reduce(d, n, MPI_DOUBLE, MPI_SUM, t, w, p);
}
void MpiComm::all_reduce_max(float* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const {
  all_reduce(d, n, MPI_FLOAT, MPI_MAX, t, w, p);
}

std::string MpiComm::broadcast(const std::string& bytes, int root) const {
  long long len = static_cast<long long>(bytes.size());
  QF_MPI_CHECK(MPI_Bcast(&len, 1, MPI_LONG_LONG, root, comm_));
  std::string out = rank_ == root ? bytes : std::string(static_cast<std::size_t>(len), '\0');
  QF_MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(len), MPI_BYTE, root, comm_));
  return out;
}


}  // namespace qforge
