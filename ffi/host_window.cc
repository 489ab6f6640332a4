#include "host_window.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "host_reduce.h"

namespace jax_symm {

namespace {

constexpr size_t kPage = 4096;

// How long a waiter spins before it sleeps on the futex. Spinning saves the
// wake-up latency, but with more ranks than cores (8 virtual devices on 2
// cores) it steals the time of the very peers being waited for: measured
// here, 2,000 spins made a 1 KiB all-gather 7x slower than none.
int SpinsFor(size_t world) {
  if (const char* env = getenv("JAX_SYMM_SPINS")) return atoi(env);
  return world <= std::thread::hardware_concurrency() ? 2000 : 0;
}
constexpr uint64_t kMagic = 0x6a61785f73796d6dull;  // "jax_symm"

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::mutex config_mu;
HostConfig& Config() {
  static auto* config = new HostConfig();
  return *config;
}

std::string ErrnoMessage(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

uint64_t Fnv1a(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xff;
    h *= 0x100000001b3ull;
  }
  return h;
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

bool ProcessGone(int32_t pid) {
  return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH;
}

// Every window this process has mapped, by segment name. Never destroyed:
// XLA may still run a handler on another thread while the interpreter exits.
std::mutex windows_mu;
std::map<std::string, HostWindow*>& Windows() {
  static auto* windows = new std::map<std::string, HostWindow*>();
  return *windows;
}

}  // namespace

// Lives at the start of every segment; zero-filled by ftruncate, which is the
// valid initial state, so no process has to initialise it first.
struct HostWindow::Header {
  struct alignas(64) RankState {
    std::atomic<uint64_t> epoch;  // barriers this rank has entered
    std::atomic<int32_t> pid;     // the process serving this rank
    std::atomic<uint64_t> input;  // direct mode: address of this rank's input
    std::atomic<int64_t> run_id;  // direct mode: the execution this rank serves
  };
  std::atomic<uint64_t> magic;
  std::atomic<uint64_t> world;
  alignas(64) std::atomic<uint64_t> arrived;     // barrier arrivals, ever
  alignas(64) std::atomic<uint32_t> generation;  // last completed barrier (futex word)
  // Set by a rank whose barrier failed: the group is out of step for good,
  // so later calls fail at once instead of each waiting out the timeout.
  std::atomic<uint32_t> broken;
  alignas(64) RankState ranks[1];                // `world` of them

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

HostConfig GetHostConfig() {
  std::lock_guard<std::mutex> lock(config_mu);
  return Config();
}

ErrorOr<HostWindow*> HostWindow::Get(CollectiveKind kind, int64_t channel,
                                     const std::vector<int64_t>& members,
                                     size_t slot_bytes) {
  const HostConfig config = GetHostConfig();
  if (config.session.empty()) {
    return Internal("host transport used before jax_symm set up its session");
  }
  // Round the slot up to a power of two so that call sites of similar size
  // share a segment size and growth is geometric.
  size_t slot = kPage;
  while (slot < slot_bytes) slot *= 2;

  uint64_t h = 0xcbf29ce484222325ull;
  h = Fnv1a(h, static_cast<uint64_t>(kind));
  h = Fnv1a(h, static_cast<uint64_t>(channel));
  h = Fnv1a(h, slot);
  for (int64_t m : members) h = Fnv1a(h, static_cast<uint64_t>(m));
  char hex[17];
  snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  std::string name = "/jax_symm-" + config.session + "-" + hex;

  std::lock_guard<std::mutex> lock(windows_mu);
  auto& windows = Windows();
  if (auto it = windows.find(name); it != windows.end()) return it->second;

  const size_t world = members.size();
  const size_t header_bytes = Header::Bytes(world);
  if (slot > (SIZE_MAX / 4 - header_bytes) / world) {
    return InvalidArgument("a host window of " + std::to_string(world) + " x " +
                           std::to_string(slot) + " bytes is too large");
  }
  // One process reads inputs in place and needs only the header.
  const size_t total = header_bytes + (config.single_process ? 0 : 2 * world * slot);

  int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0) return Internal(ErrnoMessage("shm_open " + name));
  // Every opener asks for the same size, so this is idempotent and race-free.
  if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
    Error err = Internal(ErrnoMessage("ftruncate " + name + " to " +
                                      std::to_string(total) + " bytes"));
    close(fd);
    return err;
  }
  // ftruncate only makes a sparse file: without reserving the pages now, a
  // full /dev/shm would kill the process with SIGBUS at the first copy.
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(total)); err != 0) {
    close(fd);
    return Internal("cannot reserve " + std::to_string(total) + " bytes in /dev/shm for " +
                    name + ": " + std::strerror(err) +
                    " (enlarge /dev/shm, e.g. docker --shm-size, or send less per call)");
  }
  void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED) return Internal(ErrnoMessage("mmap " + name));

  auto* window = new HostWindow();
  window->name_ = name;
  window->members_ = members;
  window->slot_bytes_ = slot;
  window->mapped_bytes_ = total;
  window->header_ = static_cast<Header*>(base);
  window->data_ = static_cast<char*>(base) + header_bytes;
  window->header_->magic.store(kMagic);
  window->header_->world.store(world);
  window->direct_ = config.single_process;
  window->spins_ = SpinsFor(world);
  // Alone, nobody else needs the name: unlink now, so that not even a
  // SIGKILL can leave the segment behind.
  if (config.single_process) shm_unlink(name.c_str());
  windows[name] = window;
  return window;
}

void HostWindow::ClaimRanks(const std::vector<int64_t>& ranks) {
  for (int64_t r : ranks) {
    if (r >= 0 && static_cast<size_t>(r) < members_.size()) {
      header_->ranks[r].pid.store(static_cast<int32_t>(getpid()));
    }
  }
}

Error HostWindow::Barrier(int64_t rank, uint64_t epoch) {
  Header* h = header_;
  const uint64_t world = members_.size();
  h->ranks[rank].epoch.store(epoch, std::memory_order_release);
  const uint64_t arrived = h->arrived.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (arrived == epoch * world) {  // last to arrive releases everyone
    h->generation.store(static_cast<uint32_t>(epoch), std::memory_order_release);
    FutexWakeAll(&h->generation);
    return Error::Success();
  }
  auto done = [&](uint32_t gen) {
    return static_cast<int32_t>(gen - static_cast<uint32_t>(epoch)) >= 0;
  };
  // A short spin catches peers that are a few microseconds behind.
  for (int i = 0; i < spins_; ++i) {
    if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  const HostConfig config = GetHostConfig();
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    const uint32_t gen = h->generation.load(std::memory_order_acquire);
    if (done(gen)) return Error::Success();
    FutexWait(&h->generation, gen, config.poll_s);
    if (done(h->generation.load(std::memory_order_acquire))) return Error::Success();

    // Still waiting: name the ranks that have not arrived, and give up at
    // once if one of their processes is gone.
    std::string missing;
    bool peer_died = false;
    for (uint64_t r = 0; r < world; ++r) {
      if (h->ranks[r].epoch.load(std::memory_order_acquire) >= epoch) continue;
      const int32_t pid = h->ranks[r].pid.load(std::memory_order_relaxed);
      const bool gone = ProcessGone(pid);
      peer_died |= gone;
      missing += (missing.empty() ? "" : ", ") + std::string("rank ") +
                 std::to_string(r) + " (device " + std::to_string(members_[r]) +
                 (pid > 0 ? ", pid " + std::to_string(pid) : std::string()) +
                 (gone ? ", exited" : "") + ")";
    }
    const double waited = std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - start).count();
    const bool broken_elsewhere = h->broken.load(std::memory_order_acquire) != 0;
    if (peer_died || waited > config.timeout_s || broken_elsewhere) {
      // Our arrival stays counted, so this call site is out of step for
      // good: mark it, so that every later call on it fails at once.
      h->broken.store(1, std::memory_order_release);
      FutexWakeAll(&h->generation);
      if (broken_elsewhere && !peer_died) {
        return Internal("another rank of group " + GroupToString(members_) +
                        " gave up on this call site after a failure; the group is out "
                        "of step (restart the job)");
      }
      return DeadlineExceeded(
          std::string(peer_died ? "a peer process exited" : "timed out") +
          " during a collective on group " + GroupToString(members_) +
          " (rank " + std::to_string(rank) + ", call " + std::to_string(epoch) +
          ", waited " + std::to_string(waited) + " s); not arrived: " + missing +
          ". Raise JAX_SYMM_TIMEOUT_S if peers are merely slow.");
    }
  }
}

template <typename Consume>
Error HostWindow::Exchange(int64_t rank, int64_t run_id, const void* in, size_t in_bytes,
                          Consume consume) {
  if (header_->broken.load(std::memory_order_acquire) != 0) {
    return Internal("an earlier call at this call site of group " + GroupToString(members_) +
                    " failed (a peer died or timed out), so its ranks are out of step; "
                    "restart the job");
  }
  auto& me = header_->ranks[rank];
  me.pid.store(static_cast<int32_t>(getpid()), std::memory_order_relaxed);
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + 1;
  const size_t world = members_.size();
  std::vector<const char*> sources(world);
  if (direct_) {
    // All ranks share this address space: read each other's inputs in place,
    // then wait until everyone is done before any input can be released.
    me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
    me.run_id.store(run_id, std::memory_order_relaxed);
    JAX_SYMM_RETURN_IF_ERROR(Barrier(rank, epoch));
    bool same_run = true;
    for (size_t q = 0; q < world; ++q) {
      sources[q] = reinterpret_cast<const char*>(
          header_->ranks[q].input.load(std::memory_order_relaxed));
      same_run &= header_->ranks[q].run_id.load(std::memory_order_relaxed) == run_id;
    }
    // Executions launched concurrently from several threads may reach the
    // devices in different orders; better an error than another run's data.
    Error consumed =
        same_run ? consume(sources)
                 : Internal("the devices of group " + GroupToString(members_) +
                            " met at one call site while serving different executions: "
                            "programs that share devices were run concurrently from "
                            "several threads; run them from one thread at a time");
    Error left = Barrier(rank, epoch + 1);
    return consumed.failure() ? consumed : left;
  }
  char* buffer = data_ + (epoch & 1) * world * slot_bytes_;
  std::memcpy(Slot(buffer, rank), in, in_bytes);
  JAX_SYMM_RETURN_IF_ERROR(Barrier(rank, epoch));
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q);
  return consume(sources);
}

Error HostWindow::AllGather(const CallLayout& layout, int64_t run_id, const void* in,
                            void* out) {
  const size_t inner = static_cast<size_t>(layout.inner_bytes);
  return Exchange(layout.rank, run_id, in, layout.chunk_bytes(),
                  [&](const std::vector<const char*>& src) {
                    char* dst = static_cast<char*>(out);
                    for (int64_t o = 0; o < layout.outer; ++o) {
                      for (int64_t q = 0; q < layout.world; ++q) {
                        std::memcpy(dst, src[q] + o * inner, inner);
                        dst += inner;
                      }
                    }
                    return Error::Success();
                  });
}

Error HostWindow::ReduceScatter(const CallLayout& layout, int64_t run_id,
                                ffi::DataType dtype, const void* in, void* out) {
  const size_t inner = static_cast<size_t>(layout.inner_bytes);
  const size_t count = inner / ffi::ByteWidth(dtype);
  return Exchange(layout.rank, run_id, in, layout.chunk_bytes() * layout.world,
                  [&](const std::vector<const char*>& src) {
                    std::vector<const char*> rows(layout.world);
                    for (int64_t o = 0; o < layout.outer; ++o) {
                      for (int64_t q = 0; q < layout.world; ++q) {
                        rows[q] = src[q] + (o * layout.world + layout.rank) * inner;
                      }
                      JAX_SYMM_RETURN_IF_ERROR(host_reduce::Sum(
                          dtype, static_cast<char*>(out) + o * inner, rows, count));
                    }
                    return Error::Success();
                  });
}

Error HostWindow::AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                            const void* in, void* out) {
  const size_t bytes = layout.chunk_bytes();
  return Exchange(layout.rank, run_id, in, bytes, [&](const std::vector<const char*>& src) {
    return host_reduce::Sum(dtype, out, src, bytes / ffi::ByteWidth(dtype));
  });
}

void HostWindow::UnlinkAll() {
  std::lock_guard<std::mutex> lock(windows_mu);
  for (auto& [name, window] : Windows()) shm_unlink(name.c_str());
}

std::vector<std::string> HostWindow::ReapStale() {
  std::vector<std::string> removed;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return removed;
  const std::string prefix = "jax_symm-";
  while (dirent* entry = readdir(dir)) {
    const std::string file = entry->d_name;
    if (file.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string name = "/" + file;
    {
      std::lock_guard<std::mutex> lock(windows_mu);
      if (Windows().count(name)) continue;  // ours
    }
    int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) continue;
    struct stat st;
    bool stale = false;
    if (fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) >= sizeof(Header)) {
      void* base = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
      if (base != MAP_FAILED) {
        const Header* h = static_cast<const Header*>(base);
        const uint64_t world = h->world.load();
        if (h->magic.load() == kMagic && world > 0 &&
            Header::Bytes(world) <= static_cast<size_t>(st.st_size)) {
          // Stale when some rank has run and every rank that ran is gone.
          bool any_pid = false, any_alive = false;
          for (uint64_t r = 0; r < world; ++r) {
            const int32_t pid = h->ranks[r].pid.load();
            if (pid <= 0) continue;
            any_pid = true;
            any_alive |= !ProcessGone(pid);
          }
          stale = any_pid && !any_alive;
        }
        munmap(base, st.st_size);
      }
    }
    close(fd);
    if (stale && shm_unlink(name.c_str()) == 0) removed.push_back(name);
  }
  closedir(dir);
  return removed;
}

std::vector<std::pair<std::string, size_t>> HostWindow::List() {
  std::lock_guard<std::mutex> lock(windows_mu);
  std::vector<std::pair<std::string, size_t>> out;
  for (auto& [name, window] : Windows()) out.emplace_back(name, window->mapped_bytes());
  return out;
}

}  // namespace jax_symm
