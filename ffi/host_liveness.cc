#include "host_liveness.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "host_segment.h"

namespace jax_symm {
namespace {

constexpr uint64_t kMagic = 0x6a61785f6c697665ull;  // "jax_live"
constexpr uint64_t kVersion = 1;
constexpr size_t kPage = 4096;
constexpr int kFailures = 4;  // the last set-up failures a process keeps

enum : uint32_t { kNotJoined = 0, kAlive = 1, kLeft = 2 };

struct alignas(64) ProcessRecord {
  std::atomic<uint32_t> state;     // kNotJoined, kAlive, kLeft
  std::atomic<int32_t> pid;        // for messages only
  std::atomic<uint32_t> failures;  // set-up failures recorded, ever
  char reason[512];                // why it left (written before state = kLeft)
  struct Failure {
    char name[64];   // the window it could not make
    char why[448];
  } failed[kFailures];
};

struct alignas(64) JobHeader {
  std::atomic<uint64_t> magic;  // set last by the creator
  uint64_t version;
  uint64_t processes;
};

size_t RecordBytes(size_t processes) {
  const size_t raw = sizeof(JobHeader) + processes * sizeof(ProcessRecord);
  return (raw + kPage - 1) / kPage * kPage;
}

struct Job {
  SharedSegment* segment = nullptr;
  JobHeader* header = nullptr;
  ProcessRecord* records = nullptr;
  int64_t me = -1;
  int64_t processes = 0;
};

// Set once, never freed: waiters on other threads read it without a lock.
std::atomic<Job*> job{nullptr};
std::mutex join_mu;

std::mutex devices_mu;
std::map<int64_t, int64_t>& DeviceProcesses() {
  static auto* m = new std::map<int64_t, int64_t>();
  return *m;
}

// A bounded copy of a string a peer wrote.
template <size_t N>
std::string Bounded(const char (&text)[N]) {
  char copy[N];
  std::memcpy(copy, text, N);
  copy[N - 1] = '\0';
  return copy;
}

template <size_t N>
void Write(char (&dst)[N], const std::string& text) {
  std::strncpy(dst, text.c_str(), N - 1);
  dst[N - 1] = '\0';
}

std::string Who(const Job& j, int64_t process) {
  const int32_t pid = j.records[process].pid.load(std::memory_order_relaxed);
  return "process " + std::to_string(process) +
         (pid > 0 ? " (pid " + std::to_string(pid) + ")" : std::string());
}

}  // namespace

Error JoinJob(const std::string& name, int64_t process, int64_t num_processes, bool create,
              double timeout_s) {
  std::lock_guard<std::mutex> lock(join_mu);
  if (job.load() != nullptr) return Internal("this process has joined its job's record already");
  if (num_processes < 2 || num_processes > (1 << 16) || process < 0 ||
      process >= num_processes) {
    return InvalidArgument("process " + std::to_string(process) + " of " +
                           std::to_string(num_processes) + " cannot join a job record");
  }
  const size_t bytes = RecordBytes(static_cast<size_t>(num_processes));
  ErrorOr<SharedSegment*> made = create ? SharedSegment::Create(name, bytes)
                                        : SharedSegment::Open(name, bytes, timeout_s, nullptr);
  if (made.has_error()) return made.error();
  SharedSegment* seg = *made;
  auto* header = reinterpret_cast<JobHeader*>(seg->base());
  auto* records = reinterpret_cast<ProcessRecord*>(seg->base() + sizeof(JobHeader));
  auto give_up = [&](Error err) -> Error {
    if (create) {
      seg->UnlinkAndClose();
    } else {
      seg->Close();
    }
    seg->Unmap();
    delete seg;
    return err;
  };
  if (create) {
    // posix_fallocate gave zeroed pages: every record starts kNotJoined.
    header->version = kVersion;
    header->processes = static_cast<uint64_t>(num_processes);
    header->magic.store(kMagic, std::memory_order_release);
  } else {
    const auto deadline = std::chrono::steady_clock::now() + WaitFor(timeout_s);
    while (header->magic.load(std::memory_order_acquire) != kMagic) {
      if (std::chrono::steady_clock::now() > deadline) {
        return give_up(DeadlineExceeded("the job record /dev/shm" + name +
                                        " was never initialised by process 0"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (header->version != kVersion ||
        header->processes != static_cast<uint64_t>(num_processes)) {
      return give_up(Internal("the job record /dev/shm" + name + " describes " +
                              std::to_string(header->processes) + " processes (format " +
                              std::to_string(header->version) + "), this process expects " +
                              std::to_string(num_processes) +
                              "; do all processes run the same jax_symm?"));
    }
  }
  // The lock before the state: a peer that sees kAlive and a free lock knows
  // this process is gone.
  if (Error err = seg->HoldRank(process); err.failure()) return give_up(std::move(err));
  ProcessRecord& mine = records[process];
  mine.pid.store(static_cast<int32_t>(getpid()), std::memory_order_relaxed);
  mine.state.store(kAlive);  // seq_cst, as the loads below: the last joiner sees everyone
  seg->DropDescriptor();  // the mapping holds the lock from here; the probe stays
  // The last to join removes the name: everyone has it mapped, so nothing is
  // left in /dev/shm however the job ends (the mappings stay valid).
  bool all_joined = true;
  for (int64_t p = 0; p < num_processes; ++p) {
    all_joined &= records[p].state.load() != kNotJoined;
  }
  if (all_joined) seg->Unlink();
  job.store(new Job{seg, header, records, process, num_processes}, std::memory_order_release);
  return Error::Success();
}

void SetDeviceProcesses(const std::vector<int64_t>& device_ids,
                        const std::vector<int64_t>& processes) {
  std::lock_guard<std::mutex> lock(devices_mu);
  for (size_t i = 0; i < device_ids.size() && i < processes.size(); ++i) {
    DeviceProcesses()[device_ids[i]] = processes[i];
  }
}

int64_t ProcessOfDevice(int64_t device) {
  std::lock_guard<std::mutex> lock(devices_mu);
  auto it = DeviceProcesses().find(device);
  return it == DeviceProcesses().end() ? -1 : it->second;
}

std::string ProcessGone(int64_t process) {
  const Job* j = job.load(std::memory_order_acquire);
  if (j == nullptr || process < 0 || process >= j->processes || process == j->me) return "";
  const ProcessRecord& rec = j->records[process];
  const uint32_t state = rec.state.load(std::memory_order_acquire);
  if (state == kLeft) return Who(*j, process) + " " + Bounded(rec.reason);
  // Never joined: it may still be setting up (the set-up itself waits for it).
  if (state == kAlive && !j->segment->RankHeld(process)) {
    return Who(*j, process) + ": its process exited or was killed";
  }
  return "";
}

void LeaveJob(const std::string& why) {
  Job* j = job.load(std::memory_order_acquire);
  if (j == nullptr) return;
  ProcessRecord& mine = j->records[j->me];
  if (mine.state.load(std::memory_order_acquire) != kAlive) return;
  Write(mine.reason, why);
  mine.state.store(kLeft, std::memory_order_release);
}

void RecordSetupFailure(const std::string& name, const std::string& why) {
  Job* j = job.load(std::memory_order_acquire);
  if (j == nullptr) return;
  ProcessRecord& mine = j->records[j->me];
  const uint32_t n = mine.failures.load(std::memory_order_relaxed);
  ProcessRecord::Failure& f = mine.failed[n % kFailures];
  Write(f.name, name);
  Write(f.why, why);
  mine.failures.store(n + 1, std::memory_order_release);
}

std::string SetupFailure(int64_t process, const std::string& name) {
  const Job* j = job.load(std::memory_order_acquire);
  if (j == nullptr || process < 0 || process >= j->processes || process == j->me) return "";
  const ProcessRecord& rec = j->records[process];
  const uint32_t n = rec.failures.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n && i < static_cast<uint32_t>(kFailures); ++i) {
    const ProcessRecord::Failure& f = rec.failed[(n - 1 - i) % kFailures];
    if (Bounded(f.name) == name) return Who(*j, process) + " failed: " + Bounded(f.why);
  }
  return "";
}

}  // namespace jax_symm
