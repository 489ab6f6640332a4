// Host transport, part 1 of HostWindow: the registry of windows and their
// lifetime (Prepare, Validate, Find, Acquire/Release, UnlinkAll, List) and
// the per-rank Enter/Leave. The barrier is in host_barrier.cc, the exchange
// per kind in host_exchange.cc, the segment layout in host_window_layout.h.
#include "host_window.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "host_liveness.h"
#include "host_window_layout.h"

namespace jax_symm {

namespace {

using host_window_detail::AlignUp;
using host_window_detail::kPage;
using host_window_detail::Seconds;

constexpr uint64_t kMagic = 0x6a61785f73796d6dull;  // "jax_symm"
constexpr uint64_t kVersion = 6;  // 6: failure[2048]
// Far more ranks than any host has devices; bounds every size computation.
constexpr size_t kMaxWorld = 1 << 16;

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

// How many windows of each (call site, group) this process has made or opened:
// a window made anew gets the next generation (WindowSpec::generation).
std::map<WindowKey, uint64_t>& Generations() {
  static auto* generations = new std::map<WindowKey, uint64_t>();
  return *generations;
}

}  // namespace
Error SetHostConfig(const HostConfig& config) {
  JAX_SYMM_RETURN_IF_ERROR(CheckSeconds("timeout_s (JAX_SYMM_TIMEOUT_S)", config.timeout_s, 0, true));
  JAX_SYMM_RETURN_IF_ERROR(CheckSeconds("poll_s", config.poll_s, 0, true));
  JAX_SYMM_RETURN_IF_ERROR(CheckSeconds("open_timeout_s (JAX_SYMM_BOOTSTRAP_TIMEOUT_S)",
                                        config.open_timeout_s, 0, true));
  JAX_SYMM_RETURN_IF_ERROR(
      CheckSeconds("patience_s (JAX_SYMM_PATIENCE_US)", config.patience_s, 0, false));
  JAX_SYMM_RETURN_IF_ERROR(CheckSeconds("diagnose_after_s (JAX_SYMM_MISMATCH_GRACE_S)",
                                        config.diagnose_after_s, 0, false));
  if (config.spins < -1) {
    return InvalidArgument("spins (JAX_SYMM_SPINS) = " + std::to_string(config.spins) +
                           " is out of range: it must be -1 (by core count) or >= 0");
  }
  std::lock_guard<std::mutex> lock(config_mu);
  Config() = config;
  return Error::Success();
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
  if (auto it = Windows().find(key); it != Windows().end()) {
    ++it->second->pending_;  // held for this lowering's executable
    return Error::Success();
  }

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
  if (!std::isfinite(spec.wait_s) || spec.wait_s > kMaxWaitSeconds) {
    return InvalidArgument("a wait of " + std::to_string(spec.wait_s) + " s for a host window");
  }
  const double open_timeout_s = spec.wait_s >= 0 ? spec.wait_s : config.open_timeout_s;
  ErrorOr<SharedSegment*> segment =
      spec.create ? SharedSegment::Create(spec.name, total)
                  : SharedSegment::Open(spec.name, total, open_timeout_s, abandon);
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
  window->diagnose_after_s_ = config.single_process ? 0 : config.diagnose_after_s;
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
    h->next_task.store(0);
    h->working.store(0);
    h->failure_claimed.store(0);
    h->failed.store(0);
    std::memset(h->failure, 0, sizeof(h->failure));
    for (size_t r = 0; r < world; ++r) {
      h->ranks[r].epoch.store(0);
      h->ranks[r].claimed.store(0);
      h->ranks[r].pid.store(0);
    }
  } else if (Error err = window->Validate(spec, open_timeout_s, abandon); err.failure()) {
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
  window->pending_ = 1;  // held for this lowering's executable
  Windows()[key] = window;
  Generations()[key] = spec.generation;
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

uint64_t HostWindow::Generation(int64_t site, const std::vector<int64_t>& members) {
  std::lock_guard<std::mutex> lock(windows_mu);
  const WindowKey key{site, members};
  auto it = Generations().find(key);
  const uint64_t last = it == Generations().end() ? 0 : it->second;
  return Windows().count(key) ? last : last + 1;
}

bool HostWindow::Fail(int64_t site, const std::vector<int64_t>& members, const std::string& why) {
  std::lock_guard<std::mutex> lock(windows_mu);
  auto it = Windows().find(WindowKey{site, members});
  if (it == Windows().end()) return false;
  it->second->RecordFailure(why);
  return true;
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

bool HostWindow::Enter(int64_t rank) {
  return !busy_[rank].exchange(true, std::memory_order_acquire);
}

void HostWindow::Leave(int64_t rank) { busy_[rank].store(false, std::memory_order_release); }

bool HostWindow::Acquire(int64_t site, const std::vector<int64_t>& members) {
  std::lock_guard<std::mutex> lock(windows_mu);
  auto it = Windows().find(WindowKey{site, members});
  if (it == Windows().end()) return false;
  ++it->second->users_;
  if (it->second->pending_ > 0) --it->second->pending_;
  return true;
}

void HostWindow::Release(int64_t site, const std::vector<int64_t>& members) {
  HostWindow* window = nullptr;
  {
    std::lock_guard<std::mutex> lock(windows_mu);
    auto it = Windows().find(WindowKey{site, members});
    if (it == Windows().end() || --it->second->users_ > 0 || it->second->pending_ > 0) return;
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
