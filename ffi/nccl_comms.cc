#include "nccl_comms.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace jax_symm {
namespace {

struct Arena {
  char* base = nullptr;
  size_t bytes = 0;
  ncclWindow_t window = nullptr;
};

// ---- the progress beacon ----
// A collective that waits for a peer which is alive but never joins it (the
// processes run different programs, or one is stuck) never fails inside
// NCCL. To bound it without host synchronisation or per-call host work
// (XLA replays the handlers' work from CUDA graphs, where no host code runs),
// the stream itself reports progress into host-mapped memory: a memory write
// sets `busy` before each NCCL call, and a one-thread kernel after it counts
// `done` and clears `busy`. The watchdog calls a collective stalled when it
// sees `busy` with the same `done` for longer than the bound: exact whatever
// the host has queued ahead, since both words change only as the GPU runs.
// It costs GPU time per call (measured on an H200: +4.6 us per captured call,
// 3.0 of them the write's system-wide fence, 1.6 the kernel), so it is off
// unless a bound is set (JAX_SYMM_GPU_TIMEOUT_S).
std::atomic<double> stall_timeout_s{0.0};  // set from Python before any communicator

struct Beacon {
  uint32_t busy;  // 1 between a collective's start and its end
  uint32_t done;  // how many collectives of this rank have ended
};

// The kernel after each NCCL call, as PTX that the driver compiles for the
// device (no CUDA toolkit at build time): done += 1, then busy = 0. Plain
// volatile accesses, not atomics (atomics on mapped host memory are not
// atomic anyway): only this rank's stream writes its beacon, in order.
constexpr char kBeaconPtx[] = R"(
.version 6.0
.target sm_60
.address_size 64
.visible .entry jax_symm_beacon_done(.param .u64 beacon)
{
  .reg .b64 %rd<3>;
  .reg .b32 %r<2>;
  ld.param.u64 %rd1, [beacon];
  cvta.to.global.u64 %rd2, %rd1;
  ld.volatile.global.u32 %r1, [%rd2+4];
  add.u32 %r1, %r1, 1;
  st.volatile.global.u32 [%rd2+4], %r1;
  st.volatile.global.u32 [%rd2], 0;
  ret;
}
)";

struct LocalRank {
  int64_t global_id = -1;
  int cuda_ordinal = -1;
  int rank = -1;
  CUcontext context = nullptr;
  ncclComm_t comm = nullptr;       // null once shut down
  std::map<size_t, Arena> arenas;  // by size; read and grown under groups_mu
  // NCCL forbids using one communicator from two threads at once: held
  // around every enqueue (handlers), registration (set-up) and shutdown.
  std::unique_ptr<std::mutex> comm_mu = std::make_unique<std::mutex>();
  // Its progress beacon, made with the communicator and never freed (the
  // watchdog reads it until exit); null where the driver could not make one.
  Beacon* beacon_host = nullptr;
  CUdeviceptr beacon_device = 0;
  CUfunction beacon_done = nullptr;
  // The watchdog's view, which needs no comm_mu: a handler stuck inside NCCL
  // (waiting for a dead peer) may hold that forever.
  struct Failure {
    ncclComm_t watched = nullptr;    // the communicator as created; polled lock-free
    std::atomic<bool> failed{false};
    std::mutex mu;                   // guards `message`
    std::string message;             // why the watchdog aborted it
    // The watchdog thread's own: the beacon's `done` when it last looked,
    // and since when it has seen that collective running.
    uint32_t seen_done = 0;
    std::chrono::steady_clock::time_point busy_since{};
  };
  std::unique_ptr<Failure> failure = std::make_unique<Failure>();
};

// Why `r`'s communicator was aborted, or "".
std::string FailureOf(const LocalRank& r) {
  if (!r.failure->failed.load()) return "";
  std::lock_guard<std::mutex> lock(r.failure->mu);
  return r.failure->message;
}

struct Group {
  std::vector<int64_t> members;
  std::vector<LocalRank> local;
};

// Locking: set-up calls (init, arena growth, shutdown) are serialised by
// setup_mu and may block for long (device drains, collective registration);
// groups_mu only guards the maps for short look-ups, so a handler is never
// stuck behind a set-up call that waits for that handler's own kernel.
// Groups are never freed (a handler may hold a LocalRank* during shutdown).
std::mutex setup_mu;
std::mutex groups_mu;
std::map<std::vector<int64_t>, std::unique_ptr<Group>>& Groups() {
  static auto* groups = new std::map<std::vector<int64_t>, std::unique_ptr<Group>>();
  return *groups;
}

ErrorOr<const NcclApi*> Api() {
  const NcclApi* api = LoadedNcclApi();
  if (api == nullptr) return Internal("NCCL transport used before jax_symm loaded NCCL");
  return api;
}

Error MakeCurrent(const NcclApi& api, LocalRank& r) {
  if (r.context == nullptr) {
    CUdevice dev;
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuDeviceGet(&dev, r.cuda_ordinal), "cuDeviceGet"));
    JAX_SYMM_RETURN_IF_ERROR(
        CudaCheck(api.cuDevicePrimaryCtxRetain(&r.context, dev), "cuDevicePrimaryCtxRetain"));
  }
  return CudaCheck(api.cuCtxSetCurrent(r.context), "cuCtxSetCurrent");
}

// Gives `r` a progress beacon, unless no stall bound is set (then its calls
// enqueue nothing extra); on any failure `r` simply has none (its
// collectives then have no stall bound, which info() reports).
void MakeBeacon(const NcclApi& api, LocalRank& r) {
  if (!api.beacon_entry_points() || stall_timeout_s.load() <= 0) return;
  void* host = nullptr;
  CUdeviceptr device = 0;
  CUmodule module = nullptr;
  CUfunction done = nullptr;
  if (api.cuMemHostAlloc(&host, sizeof(Beacon),
                         kCuMemHostAllocPortable | kCuMemHostAllocDeviceMap) != 0) {
    return;
  }
  std::memset(host, 0, sizeof(Beacon));
  if (api.cuMemHostGetDevicePointer(&device, host, 0) != 0 ||
      api.cuModuleLoadData(&module, kBeaconPtx) != 0 ||
      api.cuModuleGetFunction(&done, module, "jax_symm_beacon_done") != 0) {
    return;  // the pinned page and module stay: a few bytes, once per rank
  }
  r.beacon_host = static_cast<Beacon*>(host);
  r.beacon_device = device;
  r.beacon_done = done;
}

// Ends an NCCL group whether or not its body failed, keeping the first error.
Error EndGroup(const NcclApi& api, Error body) {
  Error end = NcclCheck(api.ncclGroupEnd(), "ncclGroupEnd");
  return body.failure() ? body : end;
}

// Locks `r`'s communicator into `out`; fails if the group was shut down or
// its communicator aborted.
Error Hold(const NcclApi& api, LocalRank& r, const Arena& arena, NcclRank* out) {
  if (std::string why = FailureOf(r); !why.empty()) return Internal(why);
  std::unique_lock<std::mutex> lock(*r.comm_mu);
  if (std::string why = FailureOf(r); !why.empty()) return Internal(why);
  if (r.comm == nullptr) return Internal("the NCCL communicator has been shut down");
  out->lock = std::move(lock);
  out->api = &api;
  out->context = r.context;
  out->comm = r.comm;
  out->rank = r.rank;
  out->arena_base = arena.base;
  out->arena_bytes = arena.bytes;
  out->beacon = r.beacon_device;
  out->beacon_done = r.beacon_done;
  return Error::Success();
}

// ---- the watchdog ----
// NCCL reports a dead peer (a broken connection, a remote error) as the
// communicator's asynchronous error, but a kernel waiting for that peer keeps
// waiting until the communicator is aborted. One thread per process polls
// every communicator; one in error is marked aborted (so no handler or set-up
// call uses it again), then revoked (ncclCommRevoke, NCCL >= 2.28: its
// kernels give up, so the stream drains; unlike ncclCommAbort it does not
// wait for the CUDA graphs that captured the communicator to be destroyed)
// or aborted on older NCCLs, and the process is told (NcclSetAbortNotifier).
// The watchdog never waits for a handler: a communicator whose lock is busy
// (an enqueue in progress) is polled next round.
constexpr auto kWatchdogPoll = std::chrono::milliseconds(100);
constexpr auto kWatchdogStopWait = std::chrono::seconds(2);
std::mutex watchdog_mu;
std::condition_variable watchdog_cv;
bool watchdog_stop = false;
bool watchdog_running = false;
std::mutex notifier_mu;
AbortNotifier notifier = nullptr;


std::atomic<uint64_t> watchdog_rounds{0}, watchdog_aborts{0};  // diagnostics

std::string AbortMessage(const std::vector<int64_t>& members, const LocalRank& r,
                         const std::string& cause) {
  return "jax_symm: the NCCL communicator of group " + GroupToString(members) + " (rank " +
         std::to_string(r.rank) + ", device " + std::to_string(r.global_id) +
         ") failed and was aborted: " + cause +
         ". Outputs of the jax_symm calls in flight when it failed are not valid, and "
         "every later call on this communicator fails: restart the job.";
}

void Notify(const std::string& message) {
  std::lock_guard<std::mutex> lock(notifier_mu);
  if (notifier != nullptr) notifier(message);
}

// Marks `r`'s communicator failed (from here on no handler, set-up or
// shutdown uses it), tells the process, then revokes or aborts it; returns
// the message, or "" if it had failed already.
std::string MarkAndAbort(const NcclApi& api, const std::vector<int64_t>& members, LocalRank& r,
                         const std::string& cause) {
  LocalRank::Failure& f = *r.failure;
  std::string message = AbortMessage(members, r, cause);
  {
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.failed.load() || f.watched == nullptr) return "";
    f.message = message;
    f.failed.store(true);
  }
  // Before the revoke lets the kernels in flight exit: so the process knows
  // before any thread can read the outputs those kernels leave invalid.
  Notify(message);
  api.cuCtxSetCurrent(r.context);
  if (api.ncclCommRevoke != nullptr) {
    api.ncclCommRevoke(f.watched, 0);
  } else {
    api.ncclCommAbort(f.watched);
  }
  watchdog_aborts.fetch_add(1);
  return message;
}

// Why `r`'s collective counts as stalled, or "": its beacon has shown the
// same collective running for longer than the bound.
std::string StallOf(LocalRank& r, std::chrono::steady_clock::time_point now) {
  const double bound = stall_timeout_s.load();
  LocalRank::Failure& f = *r.failure;
  if (r.beacon_host == nullptr || bound <= 0) return "";
  const uint32_t busy = __atomic_load_n(&r.beacon_host->busy, __ATOMIC_ACQUIRE);
  const uint32_t done = __atomic_load_n(&r.beacon_host->done, __ATOMIC_ACQUIRE);
  if (!busy || done != f.seen_done) {  // idle, or another collective since
    f.seen_done = done;
    f.busy_since = busy ? now : std::chrono::steady_clock::time_point{};
    return "";
  }
  if (f.busy_since == std::chrono::steady_clock::time_point{}) f.busy_since = now;
  const double waited = std::chrono::duration<double>(now - f.busy_since).count();
  if (waited <= bound) return "";
  char text[96];
  std::snprintf(text, sizeof(text), "%g", bound);
  return "a collective made no progress for more than " + std::string(text) +
         " s (JAX_SYMM_GPU_TIMEOUT_S): a peer process is stuck, or the processes run "
         "different programs, or raise JAX_SYMM_GPU_TIMEOUT_S if a step can really wait "
         "that long";
}

// Polls one rank's communicator; returns the abort message if it failed.
// ncclCommGetAsyncError only reads atomics, so it needs no lock; the abort
// runs beside a handler that may be blocked inside NCCL on this
// communicator, which is what unblocks it (its call then fails).
std::string PollRank(const NcclApi& api, const std::vector<int64_t>& members, LocalRank& r,
                     std::chrono::steady_clock::time_point now) {
  LocalRank::Failure& f = *r.failure;
  if (f.watched == nullptr || f.failed.load()) return "";
  if (api.cuCtxSetCurrent(r.context) != 0) return "";
  ncclResult_t state = kNcclSuccess;
  ncclResult_t polled = api.ncclCommGetAsyncError(f.watched, &state);
  if (polled == kNcclSuccess && (state == kNcclSuccess || state == kNcclInProgress)) {
    std::string stall = StallOf(r, now);
    return stall.empty() ? "" : MarkAndAbort(api, members, r, stall);
  }
  ncclResult_t code = polled != kNcclSuccess ? polled : state;
  std::string cause = "NCCL error " + std::to_string(code) + ": " + api.ncclGetErrorString(code);
  if (api.ncclGetLastError) {
    const char* last = api.ncclGetLastError(f.watched);
    if (last && *last) cause += " (" + std::string(last) + ")";
  }
  return MarkAndAbort(api, members, r,
                      cause + "; a peer process probably died or lost its connection");
}


void WatchdogLoop(const NcclApi* api) {
  std::unique_lock<std::mutex> lock(watchdog_mu);
  while (!watchdog_cv.wait_for(lock, kWatchdogPoll, [] { return watchdog_stop; })) {
    lock.unlock();
    std::vector<std::pair<const std::vector<int64_t>*, LocalRank*>> ranks;
    {
      std::lock_guard<std::mutex> groups_lock(groups_mu);
      for (auto& [members, group] : Groups()) {
        for (LocalRank& r : group->local) ranks.emplace_back(&group->members, &r);
      }
    }
    // Groups and their ranks are never freed or moved once registered.
    const auto now = std::chrono::steady_clock::now();
    for (auto& [members, r] : ranks) PollRank(*api, *members, *r, now);
    watchdog_rounds.fetch_add(1);
    lock.lock();
  }
  watchdog_running = false;
  watchdog_cv.notify_all();
}

void StartWatchdog(const NcclApi& api) {
  std::lock_guard<std::mutex> lock(watchdog_mu);
  if (watchdog_running || watchdog_stop) return;
  watchdog_running = true;
  std::thread(WatchdogLoop, &api).detach();
}

// Stops the watchdog, waiting a little: one stuck in an abort (a kernel that
// never gives up) is left behind, with nobody to notify.
void StopWatchdog() {
  {
    std::lock_guard<std::mutex> lock(notifier_mu);
    notifier = nullptr;
  }
  std::unique_lock<std::mutex> lock(watchdog_mu);
  watchdog_stop = true;
  watchdog_cv.notify_all();
  watchdog_cv.wait_for(lock, kWatchdogStopWait, [] { return !watchdog_running; });
}

}  // namespace

ErrorOr<std::string> NcclNewUniqueId() {
  ErrorOr<const NcclApi*> api = Api();
  if (api.has_error()) return api.error();
  ncclUniqueId id;
  JAX_SYMM_RETURN_IF_ERROR(NcclCheck((*api)->ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

Error NcclInitGroup(const std::vector<int64_t>& members,
                    const std::vector<LocalRankSpec>& local, const std::string& unique_id) {
  ErrorOr<const NcclApi*> api_or = Api();
  if (api_or.has_error()) return api_or.error();
  const NcclApi& api = **api_or;
  std::lock_guard<std::mutex> setup(setup_mu);
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    if (Groups().count(members)) return Error::Success();
  }
  if (unique_id.size() != sizeof(ncclUniqueId)) return InvalidArgument("bad NCCL unique id");
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));

  auto group = std::make_unique<Group>();
  group->members = members;
  for (const LocalRankSpec& spec : local) {
    LocalRank r;
    r.global_id = spec.global_id;
    r.cuda_ordinal = spec.cuda_ordinal;
    r.rank = spec.rank;
    // Contexts first, outside the NCCL group, so the group holds NCCL calls only.
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, r));
    MakeBeacon(api, r);
    group->local.push_back(std::move(r));
  }
  Error body = NcclCheck(api.ncclGroupStart(), "ncclGroupStart");
  if (body.failure()) return body;
  for (LocalRank& r : group->local) {
    body = CudaCheck(api.cuCtxSetCurrent(r.context), "cuCtxSetCurrent");
    if (body.success()) {
      body = NcclCheck(
          api.ncclCommInitRank(&r.comm, static_cast<int>(members.size()), id, r.rank),
          "ncclCommInitRank");
    }
    if (body.failure()) break;
  }
  Error end = EndGroup(api, std::move(body));
  if (end.failure()) {
    for (LocalRank& r : group->local) {
      if (r.comm) api.ncclCommAbort(r.comm);  // local; does not wait for peers
    }
    return end;
  }
  for (LocalRank& r : group->local) r.failure->watched = r.comm;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    Groups()[members] = std::move(group);
  }
  StartWatchdog(api);
  return Error::Success();
}

ErrorOr<size_t> NcclEnsureArena(const std::vector<int64_t>& members, size_t bytes,
                                size_t min_bytes) {
  ErrorOr<const NcclApi*> api_or = Api();
  if (api_or.has_error()) return api_or.error();
  const NcclApi& api = **api_or;
  if (!api.symmetric_windows()) return Internal("this NCCL has no symmetric windows");
  std::lock_guard<std::mutex> setup(setup_mu);
  Group* group = nullptr;
  size_t have = 0;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    auto it = Groups().find(members);
    if (it == Groups().end()) return Internal("no communicator for " + GroupToString(members));
    group = it->second.get();
    const auto& arenas = group->local.front().arenas;
    have = arenas.empty() ? 0 : arenas.rbegin()->first;
  }
  if (have >= bytes && have > 0) return have;

  size_t size = std::max<size_t>(min_bytes, 1 << 20);
  while (size < bytes) size *= 2;
  // Registration is collective and must not race NCCL kernels in flight on
  // these communicators (a reported deadlock): let the devices drain first.
  // No lock is held here, so handlers still launching earlier work (whose
  // kernels the drain waits for) can proceed.
  for (LocalRank& r : group->local) {
    if (std::string why = FailureOf(r); !why.empty()) return Internal(why);
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, r));
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuCtxSynchronize(), "cuCtxSynchronize"));
  }
  std::vector<Arena> fresh(group->local.size());
  for (size_t i = 0; i < group->local.size(); ++i) {
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, group->local[i]));
    void* ptr = nullptr;
    Error err = NcclCheck(api.ncclMemAlloc(&ptr, size), "ncclMemAlloc", group->local[i].comm);
    if (err.failure()) {  // a failed ncclMemAlloc hands back garbage: free only ours
      for (size_t j = 0; j < i; ++j) api.ncclMemFree(fresh[j].base);
      return Internal(std::string(err.message()) + " (asked for " + std::to_string(size) +
                      " bytes; lower JAX_SYMM_ARENA_MB or free GPU memory)");
    }
    fresh[i].base = static_cast<char*>(ptr);
    fresh[i].bytes = size;
  }
  std::vector<std::unique_lock<std::mutex>> comm_locks;
  for (LocalRank& r : group->local) comm_locks.emplace_back(*r.comm_mu);
  Error body = NcclCheck(api.ncclGroupStart(), "ncclGroupStart");
  if (body.failure()) return body;
  for (size_t i = 0; i < group->local.size() && body.success(); ++i) {
    body = CudaCheck(api.cuCtxSetCurrent(group->local[i].context), "cuCtxSetCurrent");
    if (body.success()) {
      body = NcclCheck(api.ncclCommWindowRegister(group->local[i].comm, fresh[i].base, size,
                                                  &fresh[i].window, kNcclWinCollSymmetric),
                       "ncclCommWindowRegister", group->local[i].comm);
    }
  }
  Error end = EndGroup(api, std::move(body));
  comm_locks.clear();
  // On failure the windows' state is unknown, so the memory is kept, not
  // freed under a possibly registered window.
  if (end.failure()) return end;
  std::lock_guard<std::mutex> lock(groups_mu);
  for (size_t i = 0; i < group->local.size(); ++i) group->local[i].arenas[size] = fresh[i];
  return size;
}

std::vector<NcclGroupInfo> NcclGroups() {
  std::lock_guard<std::mutex> lock(groups_mu);
  std::vector<NcclGroupInfo> out;
  for (auto& [members, group] : Groups()) {
    NcclGroupInfo info;
    info.members = members;
    for (const LocalRank& r : group->local) info.local_global_ids.push_back(r.global_id);
    info.symmetric_windows = true;
    for (const LocalRank& r : group->local) {
      for (auto& [size, arena] : r.arenas) info.symmetric_windows &= arena.window != nullptr;
      info.stall_watch &= r.beacon_host != nullptr;
      info.collectives_done.push_back(
          r.beacon_host ? __atomic_load_n(&r.beacon_host->done, __ATOMIC_ACQUIRE) : 0);
    }
    if (!group->local.empty()) {
      for (auto& [size, arena] : group->local[0].arenas) info.arena_bytes.push_back(size);
    }
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<std::string> NcclAborted() {
  std::vector<LocalRank*> ranks;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    for (auto& [members, group] : Groups()) {
      for (LocalRank& r : group->local) ranks.push_back(&r);
    }
  }
  std::vector<std::string> out;
  for (LocalRank* r : ranks) {
    if (std::string why = FailureOf(*r); !why.empty()) out.push_back(why);
  }
  return out;
}

uint64_t NcclWatchdogRounds() { return watchdog_rounds.load(); }

Error NcclSetStallTimeout(double seconds) {
  // A nan bound would switch the beacon on and then never trip.
  JAX_SYMM_RETURN_IF_ERROR(CheckSeconds("JAX_SYMM_GPU_TIMEOUT_S", seconds, 0, false));
  stall_timeout_s.store(seconds);
  return Error::Success();
}

Error MarkBusy(const NcclRank& r, CUstream stream) {
  if (r.beacon == 0) return Error::Success();
  return CudaCheck(r.api->cuStreamWriteValue32(stream, r.beacon + offsetof(Beacon, busy), 1, 0),
                   "cuStreamWriteValue32 (progress beacon)");
}

Error MarkDone(const NcclRank& r, CUstream stream) {
  if (r.beacon == 0) return Error::Success();
  CUdeviceptr beacon = r.beacon;
  void* args[] = {&beacon};
  return CudaCheck(r.api->cuLaunchKernel(r.beacon_done, 1, 1, 1, 1, 1, 1, 0, stream, args,
                                         nullptr),
                   "cuLaunchKernel (progress beacon)");
}

int NcclAbortGroupsWith(const std::vector<int64_t>& global_ids, const std::string& cause) {
  const NcclApi* api = LoadedNcclApi();
  if (api == nullptr) return 0;
  std::vector<std::pair<const std::vector<int64_t>*, LocalRank*>> hit;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    for (auto& [members, group] : Groups()) {
      bool affected = false;
      for (int64_t id : global_ids) {
        affected |= std::find(members.begin(), members.end(), id) != members.end();
      }
      if (!affected) continue;
      for (LocalRank& r : group->local) hit.emplace_back(&group->members, &r);
    }
  }
  int aborted = 0;
  for (auto& [members, r] : hit) {
    if (!MarkAndAbort(*api, *members, *r, cause).empty()) ++aborted;
  }
  return aborted;
}

void NcclSetAbortNotifier(AbortNotifier fn) {
  std::lock_guard<std::mutex> lock(notifier_mu);
  notifier = fn;
}

void NcclShutdown(bool orderly) {
  const NcclApi* api = LoadedNcclApi();
  if (api == nullptr) return;
  StopWatchdog();  // before the locks: it may be polling under one
  std::lock_guard<std::mutex> setup(setup_mu);
  std::vector<Group*> groups;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    for (auto& [members, group] : Groups()) groups.push_back(group.get());
  }
  // Peers may be gone or still running, ncclCommAbort waits for every CUDA
  // graph that captured the communicator to be destroyed (which XLA may not
  // have done by now), and a handler stuck on a failed one holds its lock:
  // in a multi-process job nothing is torn down, the process's exit frees it.
  if (!orderly) return;
  for (Group* group : groups) {
    bool failed = false;
    for (LocalRank& r : group->local) failed |= r.failure->failed.load();
    if (failed) continue;  // aborted already; its kernels are gone
    std::vector<std::unique_lock<std::mutex>> comm_locks;
    for (LocalRank& r : group->local) comm_locks.emplace_back(*r.comm_mu);
    for (LocalRank& r : group->local) {
      if (MakeCurrent(*api, r).success()) api->cuCtxSynchronize();
    }
    // Deregistration is collective across the group's local ranks.
    if (api->ncclGroupStart() == 0) {
      for (LocalRank& r : group->local) {
        api->cuCtxSetCurrent(r.context);
        for (auto& [size, arena] : r.arenas) {
          if (arena.window && r.comm) api->ncclCommWindowDeregister(r.comm, arena.window);
        }
      }
      api->ncclGroupEnd();
    }
    std::lock_guard<std::mutex> lock(groups_mu);
    for (LocalRank& r : group->local) {
      api->cuCtxSetCurrent(r.context);
      for (auto& [size, arena] : r.arenas) api->ncclMemFree(arena.base);
      r.arenas.clear();
      if (r.comm) api->ncclCommDestroy(r.comm);
      r.comm = nullptr;
    }
  }
}

Error NcclAcquireRank(const std::vector<int64_t>& members, int64_t global_id,
                      size_t arena_bytes, NcclRank* out) {
  ErrorOr<const NcclApi*> api = Api();
  if (api.has_error()) return api.error();
  LocalRank* rank = nullptr;
  Arena arena;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    auto it = Groups().find(members);
    if (it == Groups().end()) {
      return Internal("no NCCL communicator for group " + GroupToString(members) +
                      " (it is created when a program using it is lowered)");
    }
    for (LocalRank& r : it->second->local) {
      if (r.global_id == global_id) rank = &r;
    }
    if (rank == nullptr) {
      return Internal("device " + std::to_string(global_id) + " has no rank in group " +
                      GroupToString(members));
    }
    auto a = rank->arenas.find(arena_bytes);
    if (a == rank->arenas.end()) {
      return Internal("no symmetric arena of " + std::to_string(arena_bytes) +
                      " bytes for device " + std::to_string(global_id));
    }
    arena = a->second;
  }
  // groups_mu is released first: shutdown takes the communicator locks before it.
  return Hold(**api, *rank, arena, out);
}

Error NcclAcquireLocalRanks(const std::vector<int64_t>& members, std::vector<NcclRank>* out) {
  ErrorOr<const NcclApi*> api = Api();
  if (api.has_error()) return api.error();
  std::vector<std::pair<LocalRank*, Arena>> found;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    auto it = Groups().find(members);
    if (it == Groups().end()) {
      return Internal("no NCCL communicator for group " + GroupToString(members));
    }
    for (LocalRank& r : it->second->local) {
      if (r.arenas.empty()) return Internal("no symmetric arena for " + GroupToString(members));
      found.emplace_back(&r, r.arenas.rbegin()->second);
    }
  }
  out->clear();
  out->resize(found.size());
  for (size_t i = 0; i < found.size(); ++i) {
    JAX_SYMM_RETURN_IF_ERROR(Hold(**api, *found[i].first, found[i].second, &(*out)[i]));
  }
  return Error::Success();
}

}  // namespace jax_symm
