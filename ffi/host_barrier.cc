// Host transport, part 2 of HostWindow: the barrier every call meets its
// peers at (Arrive/Await, the first meeting with its patience on XLA's
// thread), and the diagnosis of a failed one: which peer is gone or late,
// recorded once in the segment for every rank's error.
#include "host_window.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "host_liveness.h"
#include "host_window_layout.h"

namespace jax_symm {

using host_window_detail::FutexWait;
using host_window_detail::FutexWakeAll;
using host_window_detail::Seconds;

void HostWindow::RecordFailure(const std::string& why) {
  Header* h = header_;
  uint32_t expected = 0;
  if (h->failure_claimed.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    std::strncpy(h->failure, why.c_str(), sizeof(h->failure) - 1);
    h->failure[sizeof(h->failure) - 1] = '\0';
  }
  // seq_cst, as the other half of SharedWork's handshake on `working`.
  h->failed.store(1, std::memory_order_seq_cst);
  FutexWakeAll(&h->generation);
}

Error HostWindow::Settled(Error err) const {
  // seq_cst pairs with the working rank's increment and its read of
  // `failed`: either that rank saw the failure and takes no task, or this
  // read sees it working. A working rank stops after the task in hand.
  while (header_->working.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  return err;
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
  // The last to arrive releases everyone. No rank takes a task between the
  // barriers of two calls, so the next call's tasks can start from 0 here.
  h->next_task.store(0, std::memory_order_relaxed);
  h->generation.store(static_cast<uint32_t>(epoch), std::memory_order_release);
  FutexWakeAll(&h->generation);
  return true;
}

namespace {
// Why the process `pid` of this PID namespace is not running, from
// /proc/<pid>/stat, or "" when it runs or /proc does not show it. (A peer in
// another PID namespace has another number here: its pid is only read where
// it is visible, and a process that is gone is the job record's business.)
std::string NotRunning(int32_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');  // the command name may hold anything
  if (paren == std::string::npos || paren + 2 >= text.size()) return "";
  switch (text[paren + 2]) {
    case 'T': return "not running: stopped (SIGSTOP, Ctrl-Z)";
    case 't': return "not running: stopped by a debugger";
    default: return "";
  }
}

// The likely cause of a timeout, from who is missing: a stopped peer, a rank
// of this very process that never started the call, or peers elsewhere.
std::string TimeoutCause(const std::set<int32_t>& stopped, bool local_missing) {
  if (!stopped.empty()) {
    std::string pids;
    for (int32_t pid : stopped) pids += (pids.empty() ? "" : ", ") + std::to_string(pid);
    return "The peer process" + std::string(stopped.size() > 1 ? "es" : "") + " with pid " +
           pids + " " + (stopped.size() > 1 ? "are" : "is") +
           " stopped; continue it (SIGCONT, fg) or raise JAX_SYMM_TIMEOUT_S.";
  }
  std::string cause;
  if (local_missing) {
    cause = "A rank of this very process never started this call: XLA:CPU runs a "
            "process's executions on one pool of threads, and too many asynchronously "
            "dispatched steps can fill it with calls that wait for peers whose own "
            "executions cannot start (block on a result every few steps with "
            "jax.block_until_ready, or give XLA:CPU more threads). Or ";
  } else {
    cause = "Peers that are alive and running are elsewhere: ";
  }
  return cause +
         "devices took different branches of a lax.cond / lax.switch with collectives "
         "inside, or processes ran programs in a different order (every process must run "
         "them in the same order, e.g. not from several threads at once); raise "
         "JAX_SYMM_TIMEOUT_S if they are merely slow.";
}

bool Passed(uint32_t generation, uint64_t epoch) {
  return static_cast<int32_t>(generation - static_cast<uint32_t>(epoch)) >= 0;
}

// The waits that last (NextLongWaits): how many waiters each (call site,
// group) has now, and a count of changes, for the one diagnosing thread.
struct LongWaitList {
  std::mutex mu;
  std::condition_variable changed;
  std::map<std::pair<int64_t, std::vector<int64_t>>, int> waiting;
  uint64_t changes = 0, seen = 0;
  std::chrono::steady_clock::time_point returned{};
  bool stopped = false;
};

LongWaitList& LongWaits() {
  static auto* list = new LongWaitList();  // never freed: waiters may outlive exit
  return *list;
}

// Lists one waiter of (site, members) from Start until it goes. Nothing is
// copied or locked unless Start runs (a wait that lasts).
class LongWaitMark {
 public:
  LongWaitMark(int64_t site, const std::vector<int64_t>& members)
      : site_(site), members_(members) {}
  LongWaitMark(const LongWaitMark&) = delete;
  LongWaitMark& operator=(const LongWaitMark&) = delete;
  ~LongWaitMark() {
    if (!listed_) return;
    LongWaitList& list = LongWaits();
    std::lock_guard<std::mutex> lock(list.mu);
    auto it = list.waiting.find(key_);
    if (it != list.waiting.end() && --it->second <= 0) list.waiting.erase(it);
    ++list.changes;
  }
  void Start() {
    if (listed_) return;
    listed_ = true;
    key_ = {site_, members_};
    LongWaitList& list = LongWaits();
    {
      std::lock_guard<std::mutex> lock(list.mu);
      ++list.waiting[key_];
      ++list.changes;
    }
    list.changed.notify_all();
  }

 private:
  int64_t site_;
  const std::vector<int64_t>& members_;  // the window's, which outlives the wait
  std::pair<int64_t, std::vector<int64_t>> key_;
  bool listed_ = false;
};
}  // namespace

bool NextLongWaits(double recheck_s, std::vector<LongWait>* waits) {
  LongWaitList& list = LongWaits();
  std::unique_lock<std::mutex> lock(list.mu);
  while (true) {
    if (list.stopped) return false;
    if (!list.waiting.empty()) {
      const auto due = list.returned + WaitFor(recheck_s);
      if (list.changes != list.seen || std::chrono::steady_clock::now() >= due) break;
      list.changed.wait_until(lock, due);
    } else {
      list.changed.wait(lock);
    }
  }
  list.seen = list.changes;
  list.returned = std::chrono::steady_clock::now();
  waits->clear();
  for (const auto& [key, count] : list.waiting) waits->push_back({key.first, key.second});
  return true;
}

void StopLongWaits() {
  LongWaitList& list = LongWaits();
  {
    std::lock_guard<std::mutex> lock(list.mu);
    list.stopped = true;
  }
  list.changed.notify_all();
}

Error HostWindow::FirstMeeting(int64_t rank, uint64_t epoch, Meeting& meeting) {
  if (!meeting.resume) {
    if (Arrive(rank, epoch)) return Error::Success();
    if (meeting.patience_s >= 0) {
      // A short futex wait, no spinning: with more ranks than cores the
      // peers being waited for need this core.
      const auto until = std::chrono::steady_clock::now() + WaitFor(meeting.patience_s);
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
  LongWaitMark long_wait(site_, members_);
  while (true) {
    const uint32_t gen = h->generation.load(std::memory_order_acquire);
    if (done(gen)) return Error::Success();
    if (h->failed.load(std::memory_order_acquire) == 0) FutexWait(&h->generation, gen, poll_s_);
    if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();

    // Still waiting: name the ranks that have arrived and those that have
    // not, and give up at once if the process serving one of them is gone
    // (its lock is free).
    std::string missing, arrived;
    std::set<int32_t> stopped;  // pids of peers that are not running
    bool peer_gone = false, local_missing = false;
    for (uint64_t r = 0; r < world; ++r) {
      const uint64_t last = h->ranks[r].epoch.load(std::memory_order_acquire);
      const std::string rank = "rank " + std::to_string(r) + " (device " +
                               std::to_string(members_[r]);
      if (last >= epoch) {
        arrived += (arrived.empty() ? "" : ", ") + rank + ")";
        continue;
      }
      // The job record knows every process, including one that never
      // lowered this program (so never claimed its ranks here).
      const std::string gone = direct_ ? "" : ProcessGone(ProcessOfDevice(members_[r]));
      const int32_t pid = h->ranks[r].pid.load(std::memory_order_relaxed);
      const bool ours = direct_ || pid == static_cast<int32_t>(getpid());
      local_missing |= ours;
      const std::string state = gone.empty() && pid > 0 && !ours ? NotRunning(pid) : "";
      if (!state.empty()) stopped.insert(pid);
      peer_gone |= !gone.empty();
      missing += (missing.empty() ? "" : ", ") + rank +
                 (pid > 0 && gone.empty() ? ", pid " + std::to_string(pid) : std::string()) +
                 (state.empty() ? "" : ", " + state) + (gone.empty() ? "" : ", " + gone) +
                 (last == 0 ? ", never here before"
                            : ", last here at call " + std::to_string(last)) + ")";
    }
    if (!arrived.empty()) missing += "; arrived: " + arrived;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (h->failed.load(std::memory_order_acquire) != 0) {
      // Our arrival stays counted, so this call site is out of step for good.
      return Internal("a collective on " + where + " gave up, as every rank of its call site "
                      "does once one has failed: " + FailureReason() +
                      " The group is out of step; restart the job.");
    }
    // Long enough to ask whether the processes' programs differ (Python
    // compares them and, if they do, fails this window with the cause).
    if (diagnose_after_s_ > 0 && waited > diagnose_after_s_) long_wait.Start();
    if (peer_gone || waited > timeout_s_) {
      // The call site stays failed (Admit), so the text says so itself.
      const std::string why =
          (peer_gone
               ? "a peer process is gone: on " + where + ", waited " + Seconds(waited) +
                     " for " + missing + "."
               : "timed out after " + Seconds(waited) + " on " + where + " waiting for " +
                     missing + ". " + TimeoutCause(stopped, local_missing)) +
          " Every later call at this call site fails with this same error; restart the job.";
      RecordFailure(why);
      return DeadlineExceeded(why);
    }
  }
}

}  // namespace jax_symm
