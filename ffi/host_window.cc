#include "host_window.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "host_copy.h"
#include "host_liveness.h"
#include "host_reduce.h"

namespace jax_symm {

namespace {

constexpr size_t kPage = 4096;
constexpr uint64_t kMagic = 0x6a61785f73796d6dull;  // "jax_symm"
constexpr uint64_t kVersion = 3;
// Far more ranks than any host has devices; bounds every size computation.
constexpr size_t kMaxWorld = 1 << 16;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::mutex config_mu;
HostConfig& Config() {
  static auto* config = new HostConfig();
  return *config;
}

HostConfig GetConfig() {
  std::lock_guard<std::mutex> lock(config_mu);
  return Config();
}

// How long a waiter spins before it sleeps on the futex. Spinning saves the
// wake-up latency, but with more ranks than cores (8 virtual devices on 2
// cores) it steals the time of the very peers being waited for: measured
// here, 2,000 spins made a 1 KiB all-gather 7x slower than none.
int SpinsFor(const HostConfig& config, size_t world) {
  if (config.spins >= 0) return config.spins;
  return world <= std::thread::hardware_concurrency() ? 2000 : 0;
}

int FutexWait(std::atomic<uint32_t>* addr, uint32_t expected, double seconds) {
  timespec ts;
  ts.tv_sec = static_cast<time_t>(seconds);
  ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
  // Not FUTEX_PRIVATE: waiters and wakers may live in different processes.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT,
                 expected, &ts, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT_MAX,
          nullptr, nullptr, 0);
}

// Every window this process has prepared, by (call site, group). A window
// lives while an executable that uses it does (Acquire / Release, from the
// handlers' instantiate stage and their state's destructor); one that no
// executable ever used (lowered, never compiled) stays until exit, and so
// does every window at exit: XLA may still run a handler on another thread
// while the interpreter exits.
using WindowKey = std::pair<int64_t, std::vector<int64_t>>;
std::mutex windows_mu;
std::map<WindowKey, HostWindow*>& Windows() {
  static auto* windows = new std::map<WindowKey, HostWindow*>();
  return *windows;
}

std::string Seconds(double s) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.2f s", s);
  return buf;
}

}  // namespace

// Lives at the start of every segment. The creator fills it in and sets
// `magic` last; openers use nothing before they have seen `magic` and checked
// every field against what their own lowering expects.
struct HostWindow::Header {
  struct alignas(64) RankState {
    std::atomic<uint64_t> epoch;    // barriers this rank has entered
    std::atomic<uint32_t> claimed;  // a process has taken this rank's lock
    std::atomic<int32_t> pid;       // that process (for messages only)
    std::atomic<uint64_t> input;    // direct mode: address of this rank's input
    std::atomic<int64_t> run_id;    // direct mode: the execution this rank serves
    std::atomic<uint64_t> output;   // direct mode: address of this rank's output
  };
  std::atomic<uint64_t> magic;
  uint64_t version, world, slot_bytes, fingerprint, kind;
  alignas(64) std::atomic<uint64_t> arrived;     // barrier arrivals, ever
  alignas(64) std::atomic<uint32_t> generation;  // last completed barrier (futex word)
  // The first rank that gives up (a peer died or timed out) writes why into
  // `failure` and then sets `failed`: the group is out of step for good, every
  // later call fails at once, and every rank's error carries the cause.
  std::atomic<uint32_t> failure_claimed;
  std::atomic<uint32_t> failed;
  char failure[1024];  // room for the cause and its hints, also when quoted by another rank
  alignas(64) RankState ranks[1];  // `world` of them

  static size_t Bytes(size_t world) {
    return AlignUp(offsetof(Header, ranks) + world * sizeof(RankState), kPage);
  }
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "need lock-free atomics");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "need lock-free atomics");

void SetHostConfig(const HostConfig& config) {
  std::lock_guard<std::mutex> lock(config_mu);
  Config() = config;
}

Error HostWindow::Prepare(const WindowSpec& spec) {
  const HostConfig config = GetConfig();
  const size_t world = spec.members.size();
  if (world < 2 || world > kMaxWorld) {
    return InvalidArgument("a host window needs 2 to " + std::to_string(kMaxWorld) +
                           " ranks, not " + std::to_string(world));
  }
  if (spec.name.empty() || spec.name[0] != '/') {
    return InvalidArgument("malformed host window name '" + spec.name + "'");
  }
  for (int64_t r : spec.local_ranks) {
    if (r < 0 || static_cast<size_t>(r) >= world) {
      return InvalidArgument("local rank " + std::to_string(r) + " is outside the group");
    }
  }
  const size_t header_bytes = Header::Bytes(world);
  if (spec.slot_bytes > (SIZE_MAX / 4 - header_bytes) / world) {
    return InvalidArgument("a host window of " + std::to_string(world) + " x " +
                           std::to_string(spec.slot_bytes) + " bytes is too large");
  }
  const WindowKey key{spec.site, spec.members};
  std::lock_guard<std::mutex> lock(windows_mu);
  if (Windows().count(key)) return Error::Success();

  // One process reads inputs in place and needs only the header.
  const size_t total =
      header_bytes + (config.single_process ? 0 : 2 * world * spec.slot_bytes);
  // A window this process should have made and could not: its peers, waiting
  // to open it, are told why at once (host_liveness), not after a timeout.
  auto failed = [&](Error err) -> Error {
    if (spec.create) RecordSetupFailure(spec.name, err.message());
    return err;
  };
  // An opener stops waiting as soon as the creator is gone or failed.
  const int64_t creator = ProcessOfDevice(spec.members[0]);
  auto abandon = [&]() -> Error {
    std::string why = SetupFailure(creator, spec.name);
    if (why.empty()) {
      why = ProcessGone(creator);
      if (!why.empty()) why += ", before it made this window";
    }
    if (why.empty()) return Error::Success();
    return Internal("the window of call site " + std::to_string(spec.site) + " (" +
                    CollectiveKindName(spec.kind) + ", group " + GroupToString(spec.members) +
                    ") will never be ready: the process that makes it, " + why +
                    ". Restart the job.");
  };
  ErrorOr<SharedSegment*> segment =
      spec.create ? SharedSegment::Create(spec.name, total)
                  : SharedSegment::Open(spec.name, total, config.open_timeout_s, abandon);
  if (segment.has_error()) return failed(segment.error());

  auto* window = new HostWindow();
  window->segment_ = *segment;
  window->site_ = spec.site;
  window->kind_ = spec.kind;
  window->members_ = spec.members;
  window->slot_bytes_ = spec.slot_bytes;
  window->header_ = reinterpret_cast<Header*>((*segment)->base());
  window->data_ = (*segment)->base() + header_bytes;
  window->direct_ = config.single_process;
  window->spins_ = SpinsFor(config, world);
  window->busy_.reset(new std::atomic<bool>[world]);
  for (size_t r = 0; r < world; ++r) window->busy_[r].store(false);
  window->timeout_s_ = config.timeout_s;
  window->poll_s_ = config.poll_s;
  window->patience_s_ = config.patience_s;
  window->local_ranks_ = spec.local_ranks.size();
  Header* h = window->header_;
  // Whatever fails from here leaves nothing behind: a segment we created is
  // unlinked; one we only opened is left to its creator.
  auto give_up = [&](Error err) -> Error {
    if (spec.create) {
      window->segment_->UnlinkAndClose();
    } else {
      window->segment_->Close();
    }
    window->segment_->Unmap();
    delete window->segment_;
    delete window;
    return failed(std::move(err));
  };
  if (spec.create) {
    h->version = kVersion;
    h->world = world;
    h->slot_bytes = spec.slot_bytes;
    h->fingerprint = spec.fingerprint;
    h->kind = static_cast<uint64_t>(spec.kind);
    h->arrived.store(0);
    h->generation.store(0);
    h->failure_claimed.store(0);
    h->failed.store(0);
    std::memset(h->failure, 0, sizeof(h->failure));
    for (size_t r = 0; r < world; ++r) {
      h->ranks[r].epoch.store(0);
      h->ranks[r].claimed.store(0);
      h->ranks[r].pid.store(0);
    }
  } else if (Error err = window->Validate(spec, config.open_timeout_s, abandon); err.failure()) {
    return give_up(std::move(err));  // nothing written into a file we did not accept
  }
  // Who is alive is the job record's business (one lock per process), so a
  // window needs no lock of its own beyond the mapping's, and no descriptor.
  for (int64_t r : spec.local_ranks) {
    h->ranks[r].pid.store(static_cast<int32_t>(getpid()));
    h->ranks[r].claimed.store(1, std::memory_order_release);
  }
  // Published last: peers use nothing before they see it.
  if (spec.create) h->magic.store(kMagic, std::memory_order_release);
  window->creator_ = spec.create;
  window->segment_->Close();  // the mapping keeps byte 0's lock from here
  // Alone, nobody else needs the name: unlink now, so that not even a
  // SIGKILL can leave the segment behind.
  if (config.single_process) window->segment_->UnlinkAndClose();
  Windows()[key] = window;
  return Error::Success();
}

Error HostWindow::Validate(const WindowSpec& spec, double timeout_s,
                           const std::function<Error()>& abandon) const {
  const Header* h = header_;
  const std::string name = "/dev/shm" + spec.name;
  const auto start = std::chrono::steady_clock::now();
  while (h->magic.load(std::memory_order_acquire) != kMagic) {
    JAX_SYMM_RETURN_IF_ERROR(abandon());
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
        timeout_s) {
      return DeadlineExceeded(name + " was created but never initialised within " +
                              Seconds(timeout_s) + " (its creator died, or it is not a "
                              "jax_symm window)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto differs = [&](const char* field, uint64_t have, uint64_t want) -> Error {
    return Internal(name + " does not describe this call site: its " + field + " is " +
                    std::to_string(have) + ", this process expects " + std::to_string(want) +
                    ". Every process must lower the same programs in the same order.");
  };
  if (h->version != kVersion) return differs("format version", h->version, kVersion);
  if (h->world != spec.members.size()) return differs("group size", h->world, spec.members.size());
  if (h->kind != static_cast<uint64_t>(spec.kind)) {
    return differs("collective kind", h->kind, static_cast<uint64_t>(spec.kind));
  }
  if (h->slot_bytes != spec.slot_bytes) return differs("slot size", h->slot_bytes, spec.slot_bytes);
  if (h->fingerprint != spec.fingerprint) {
    return differs("call fingerprint", h->fingerprint, spec.fingerprint);
  }
  return Error::Success();
}

ErrorOr<HostWindow*> HostWindow::Find(int64_t site, const std::vector<int64_t>& members) {
  std::lock_guard<std::mutex> lock(windows_mu);
  auto it = Windows().find(WindowKey{site, members});
  if (it == Windows().end()) {
    return Internal("no host window for call site " + std::to_string(site) + " of group " +
                    GroupToString(members) + " (windows are made when a program is lowered "
                    "in this process)");
  }
  return it->second;
}

void HostWindow::RecordFailure(const std::string& why) {
  Header* h = header_;
  uint32_t expected = 0;
  if (h->failure_claimed.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    std::strncpy(h->failure, why.c_str(), sizeof(h->failure) - 1);
    h->failure[sizeof(h->failure) - 1] = '\0';
  }
  h->failed.store(1, std::memory_order_release);
  FutexWakeAll(&h->generation);
}

std::string HostWindow::FailureReason() const {
  // Written by a peer of this job, but read with a bound all the same.
  char copy[sizeof(header_->failure)];
  std::memcpy(copy, header_->failure, sizeof(copy));
  copy[sizeof(copy) - 1] = '\0';
  return copy[0] ? std::string(copy) : std::string("(no reason recorded yet)");
}

Error HostWindow::Barrier(int64_t rank, uint64_t epoch) {
  if (Arrive(rank, epoch)) return Error::Success();
  return Await(rank, epoch);
}

bool HostWindow::Arrive(int64_t rank, uint64_t epoch) {
  Header* h = header_;
  h->ranks[rank].epoch.store(epoch, std::memory_order_release);
  const uint64_t arrived = h->arrived.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (arrived != epoch * members_.size()) return false;
  // The last to arrive releases everyone.
  h->generation.store(static_cast<uint32_t>(epoch), std::memory_order_release);
  FutexWakeAll(&h->generation);
  return true;
}

namespace {
bool Passed(uint32_t generation, uint64_t epoch) {
  return static_cast<int32_t>(generation - static_cast<uint32_t>(epoch)) >= 0;
}
}  // namespace

Error HostWindow::FirstMeeting(int64_t rank, uint64_t epoch, Meeting& meeting) {
  if (!meeting.resume) {
    if (Arrive(rank, epoch)) return Error::Success();
    if (meeting.patience_s >= 0) {
      // A short futex wait, no spinning: with more ranks than cores the
      // peers being waited for need this core.
      const auto until = std::chrono::steady_clock::now() +
                         std::chrono::duration<double>(meeting.patience_s);
      while (true) {
        const uint32_t gen = header_->generation.load(std::memory_order_acquire);
        if (Passed(gen, epoch) || header_->failed.load(std::memory_order_acquire) != 0) break;
        const double left =
            std::chrono::duration<double>(until - std::chrono::steady_clock::now()).count();
        if (left <= 0) {
          meeting.pending = true;
          return Error::Success();
        }
        FutexWait(&header_->generation, gen, left);
      }
    }
  }
  return Await(rank, epoch);
}

Error HostWindow::Await(int64_t rank, uint64_t epoch) {
  Header* h = header_;
  const uint64_t world = members_.size();
  auto done = [&](uint32_t gen) { return Passed(gen, epoch); };
  if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();
  // A short spin catches peers that are a few microseconds behind.
  for (int i = 0; i < spins_; ++i) {
    if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string where = "group " + GroupToString(members_) + " (rank " +
                            std::to_string(rank) + ", device " +
                            std::to_string(members_[rank]) + ", call " +
                            std::to_string(epoch) + " of call site " + std::to_string(site_) +
                            ", " + CollectiveKindName(kind_) + ")";
  while (true) {
    const uint32_t gen = h->generation.load(std::memory_order_acquire);
    if (done(gen)) return Error::Success();
    if (h->failed.load(std::memory_order_acquire) == 0) FutexWait(&h->generation, gen, poll_s_);
    if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();

    // Still waiting: name the ranks that have not arrived, and give up at
    // once if the process serving one of them is gone (its lock is free).
    std::string missing;
    bool peer_gone = false;
    for (uint64_t r = 0; r < world; ++r) {
      if (h->ranks[r].epoch.load(std::memory_order_acquire) >= epoch) continue;
      // The job record knows every process, including one that never
      // lowered this program (so never claimed its ranks here).
      const std::string gone = direct_ ? "" : ProcessGone(ProcessOfDevice(members_[r]));
      const int32_t pid = h->ranks[r].pid.load(std::memory_order_relaxed);
      peer_gone |= !gone.empty();
      missing += (missing.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) +
                 " (device " + std::to_string(members_[r]) +
                 (pid > 0 && gone.empty() ? ", pid " + std::to_string(pid) : std::string()) +
                 (gone.empty() ? "" : ", " + gone) + ")";
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (h->failed.load(std::memory_order_acquire) != 0) {
      // Our arrival stays counted, so this call site is out of step for good.
      return Internal("a collective on " + where + " gave up because another rank failed: " +
                      FailureReason() + " The group is out of step; restart the job.");
    }
    if (peer_gone || waited > timeout_s_) {
      // The call site stays failed (Admit), so the text says so itself.
      const std::string why =
          (peer_gone
               ? "a peer process is gone: on " + where + ", waited " + Seconds(waited) +
                     " for " + missing + "."
               : "timed out after " + Seconds(waited) + " on " + where + " waiting for " +
                     missing + ". Peers that are alive are elsewhere: devices that took "
                     "different branches of a lax.cond / lax.switch with collectives "
                     "inside, or processes running programs in a different order (a "
                     "process runs the programs on its devices one at a time, so every "
                     "process must run them in the same order, e.g. not from several "
                     "threads at once); raise JAX_SYMM_TIMEOUT_S if they are merely slow.") +
          " Every later call at this call site fails with this same error; restart the job.";
      RecordFailure(why);
      return DeadlineExceeded(why);
    }
  }
}

bool HostWindow::Enter(int64_t rank) {
  return !busy_[rank].exchange(true, std::memory_order_acquire);
}

void HostWindow::Leave(int64_t rank) { busy_[rank].store(false, std::memory_order_release); }

Error HostWindow::Admit(size_t bytes) const {
  if (header_->failed.load(std::memory_order_acquire) != 0) {
    return Internal("an earlier call at this call site of group " + GroupToString(members_) +
                    " failed, so its ranks are out of step; restart the job. The cause: " +
                    FailureReason());
  }
  if (bytes > slot_bytes_) {
    return Internal("a call of " + std::to_string(bytes) + " bytes does not fit its host "
                    "window's " + std::to_string(slot_bytes_) + "-byte slot");
  }
  return Error::Success();
}

bool HostWindow::PublishedInputs(int64_t run_id, size_t offset,
                                 std::vector<const char*>& sources) const {
  bool same_run = true;
  for (size_t q = 0; q < members_.size(); ++q) {
    sources[q] = reinterpret_cast<const char*>(
                     header_->ranks[q].input.load(std::memory_order_relaxed)) + offset;
    same_run &= header_->ranks[q].run_id.load(std::memory_order_relaxed) == run_id;
  }
  return same_run;
}

// Executions launched concurrently from several threads may reach the devices
// in different orders; better an error than another run's data.
Error HostWindow::DifferentExecutions() const {
  return Internal("the devices of group " + GroupToString(members_) + " met at one call "
                  "site while serving different executions: programs that share devices were "
                  "run concurrently from several threads; run them from one thread at a time");
}

template <typename Consume>
Error HostWindow::Exchange(int64_t rank, int64_t run_id, const void* in, size_t in_bytes,
                           Meeting& meeting, Consume consume) {
  auto& me = header_->ranks[rank];
  // A resumed call has arrived at its first barrier (its epoch) already.
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + (meeting.resume ? 0 : 1);
  if (!meeting.resume) JAX_SYMM_RETURN_IF_ERROR(Admit(in_bytes));
  const size_t world = members_.size();
  std::vector<const char*> sources(world);
  if (direct_) {
    // All ranks share this address space: read each other's inputs in place,
    // then wait until everyone is done before any input can be released.
    if (!meeting.resume) {
      me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
      me.run_id.store(run_id, std::memory_order_relaxed);
    }
    JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
    if (meeting.pending) return Error::Success();
    Error consumed = PublishedInputs(run_id, 0, sources) ? consume(sources)
                                                         : DifferentExecutions();
    Error left = Barrier(rank, epoch + 1);
    return consumed.failure() ? consumed : left;
  }
  char* buffer = data_ + (epoch & 1) * world * slot_bytes_;
  if (!meeting.resume) std::memcpy(Slot(buffer, rank), in, in_bytes);
  JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
  if (meeting.pending) return Error::Success();
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q);
  return consume(sources);
}

Error HostWindow::AllGather(const CallLayout& layout, int64_t run_id, const void* in,
                            void* out, Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  // What this process's ranks read and write in one call: the world's
  // inputs, and world chunks out per local rank.
  const size_t touched = (local_ranks_ + 1) * layout.world * chunk;
  const bool stream = touched > kCacheBytes;
  return Exchange(layout.rank, run_id, in, chunk, meeting, [&](const std::vector<const char*>& src) {
    char* dst = static_cast<char*>(out);
    for (int64_t q = 0; q < layout.world; ++q) {
      if (stream) {
        CopyStreaming(dst + q * chunk, src[q], chunk);
      } else {
        std::memcpy(dst + q * chunk, src[q], chunk);
      }
    }
    return Error::Success();
  });
}

Error HostWindow::ReduceScatter(const CallLayout& layout, int64_t run_id,
                                ffi::DataType dtype, const void* in, void* out,
                                Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  // Rank r keeps chunk r of the sum: it reads chunk r of every rank's input.
  return Exchange(layout.rank, run_id, in, chunk * layout.world, meeting,
                  [&](const std::vector<const char*>& src) {
                    std::vector<const char*> rows(layout.world);
                    for (int64_t q = 0; q < layout.world; ++q) rows[q] = src[q] + layout.rank * chunk;
                    return host_reduce::Sum(dtype, out, rows, chunk / ffi::ByteWidth(dtype));
                  });
}

// From this size on, an all-reduce is split: each rank sums only its 1/world
// share of the elements. In one process it writes that share straight into
// every rank's output; across processes it leaves it in its slot and everyone
// copies the shares out after one more barrier. That reads each input once in
// all instead of once per rank -- world times less summing, which is what
// matters with more ranks than cores.
constexpr size_t kPartitionedSumBytes = 8 << 10;

Error HostWindow::AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                            const void* in, void* out, Meeting& meeting) {
  const size_t bytes = layout.chunk_bytes();
  const size_t elem = ffi::ByteWidth(dtype);
  if (bytes < kPartitionedSumBytes || elem == 0) {
    return Exchange(layout.rank, run_id, in, bytes, meeting, [&](const std::vector<const char*>& src) {
      return host_reduce::Sum(dtype, out, src, bytes / elem);
    });
  }
  return PartitionedAllReduce(layout.rank, run_id, dtype, in, out, bytes / elem, elem,
                              meeting);
}

Error HostWindow::PartitionedAllReduce(int64_t rank, int64_t run_id, ffi::DataType dtype,
                                       const void* in, void* out, size_t count, size_t elem,
                                       Meeting& meeting) {
  const size_t world = members_.size(), bytes = count * elem;
  if (!meeting.resume) JAX_SYMM_RETURN_IF_ERROR(Admit(bytes));
  // Rank q owns elements [share(q), share(q + 1)), in whole cache lines.
  const size_t per = (count + world - 1) / world;
  const size_t line = std::max<size_t>(1, 64 / elem);
  const size_t step = (per + line - 1) / line * line;
  auto share = [&](size_t q) { return std::min(count, q * step); };
  const size_t lo = share(rank), n = share(rank + 1) - lo;
  auto& me = header_->ranks[rank];
  // A resumed call has arrived at its first barrier (its epoch) already.
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + (meeting.resume ? 0 : 1);
  std::vector<const char*> sources(world);
  char* dst = static_cast<char*>(out);

  if (direct_) {
    // Two meetings: inputs and outputs published; every share summed straight
    // into every rank's output (then inputs and outputs may be released).
    if (!meeting.resume) {
      me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
      me.output.store(reinterpret_cast<uint64_t>(out), std::memory_order_relaxed);
      me.run_id.store(run_id, std::memory_order_relaxed);
    }
    JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
    if (meeting.pending) return Error::Success();
    Error summed = Error::Success();
    if (!PublishedInputs(run_id, lo * elem, sources)) {
      summed = DifferentExecutions();
    } else if (n) {
      std::vector<char*> outputs(world);
      for (size_t q = 0; q < world; ++q) {
        outputs[q] = reinterpret_cast<char*>(
                         header_->ranks[q].output.load(std::memory_order_relaxed)) + lo * elem;
      }
      summed = host_reduce::Sum(dtype, outputs, sources, n);
    }
    Error left = Barrier(rank, epoch + 1);
    return summed.failure() ? summed : left;
  }
  // Across processes: inputs go through the slots; each rank writes its sum
  // over its share back into its own slot (no one else reads that share of
  // it), and after a second meeting everyone copies the shares out. Two
  // barriers a call, so buffers alternate by call, not by barrier.
  const uint64_t call = (epoch - 1) / 2;
  char* buffer = data_ + (call & 1) * world * slot_bytes_;
  if (!meeting.resume) std::memcpy(Slot(buffer, rank), in, bytes);
  JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
  if (meeting.pending) return Error::Success();
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q) + lo * elem;
  char* mine = Slot(buffer, rank) + lo * elem;
  if (n) JAX_SYMM_RETURN_IF_ERROR(host_reduce::Sum(dtype, mine, sources, n));
  JAX_SYMM_RETURN_IF_ERROR(Barrier(rank, epoch + 1));
  for (size_t q = 0; q < world; ++q) {
    const size_t at = share(q), len = share(q + 1) - at;
    if (len) std::memcpy(dst + at * elem, Slot(buffer, q) + at * elem, len * elem);
  }
  return Error::Success();
}

bool HostWindow::Acquire(int64_t site, const std::vector<int64_t>& members) {
  std::lock_guard<std::mutex> lock(windows_mu);
  auto it = Windows().find(WindowKey{site, members});
  if (it == Windows().end()) return false;
  ++it->second->users_;
  return true;
}

void HostWindow::Release(int64_t site, const std::vector<int64_t>& members) {
  HostWindow* window = nullptr;
  {
    std::lock_guard<std::mutex> lock(windows_mu);
    auto it = Windows().find(WindowKey{site, members});
    if (it == Windows().end() || --it->second->users_ > 0) return;
    window = it->second;
    Windows().erase(it);
  }
  // No executable uses it any more, so no handler runs on it: give the
  // memory back (the creator also removes the name; peers unmap their own).
  if (window->creator_) window->segment_->Unlink();
  window->segment_->Unmap();
  delete window->segment_;
  delete window;
}

void HostWindow::UnlinkAll() {
  std::lock_guard<std::mutex> lock(windows_mu);
  for (auto& [key, window] : Windows()) window->segment_->Unlink();
}

std::vector<std::pair<std::string, size_t>> HostWindow::List() {
  std::lock_guard<std::mutex> lock(windows_mu);
  std::vector<std::pair<std::string, size_t>> out;
  for (auto& [key, window] : Windows()) {
    out.emplace_back(window->segment_->name(), window->segment_->bytes());
  }
  return out;
}

}  // namespace jax_symm
