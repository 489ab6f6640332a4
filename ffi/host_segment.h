// A POSIX shared-memory segment that belongs to one job, and nobody else.
//
// /dev/shm is shared with every local user (and, with --ipc=host containers,
// with other PID namespaces), so nothing found there is trusted:
//  - names carry a keyed hash of a per-job secret (computed in Python), so no
//    one can predict a name from a listing;
//  - exactly one process creates a segment, with O_EXCL: a name that already
//    exists is someone else's, and an error;
//  - every other process opens it without following links or blocking on a
//    FIFO, and checks that it is a regular file owned by this user with mode
//    0600 and exactly the expected size before mapping it;
//  - who is alive is told by open-file-description locks, not by pids: in the
//    job's record (host_liveness.h) each process holds a shared lock on one
//    byte for as long as it lives (the mapping keeps the description, and so
//    the lock, alive; it is not inherited by forked children). The kernel drops
//    the lock when the process dies -- killed, exited, or a zombie -- and locks
//    are seen across PID namespaces, where `kill(pid, 0)` sees nothing.
//  - every mapping also holds a shared lock on byte 0, so the start-up scan
//    (ReapStaleSegments) removes only segments nobody maps. After set-up a
//    segment keeps no descriptor open: the mapping is enough.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

class SharedSegment {
 public:
  // Creates `name` (which must not exist) with `bytes` of reserved memory,
  // mapped read-write. On any failure nothing is left behind.
  static ErrorOr<SharedSegment*> Create(const std::string& name, size_t bytes);
  // Opens a segment another process of the job creates, waiting up to
  // `timeout_s` for it to appear at its full size. While it waits, `abandon`
  // (if given) is asked whether waiting still makes sense: an error it
  // returns (the creator is gone, or failed to create it) ends the wait.
  static ErrorOr<SharedSegment*> Open(const std::string& name, size_t bytes, double timeout_s,
                                      const std::function<Error()>& abandon);

  // Holds liveness lock `rank` (byte 1 + rank) for as long as the mapping lives.
  Error HoldRank(int64_t rank);
  // Whether some live process holds lock `rank` (through another open file
  // description than ours, so our own locks count as held).
  bool RankHeld(int64_t rank) const;
  // Unmaps the segment (after Close); base() is invalid from here. Drops
  // whatever locks the mapping kept.
  void Unmap();
  // Removes the name (mappings stay valid until exit).
  void Unlink() const;
  // Closes the descriptor that took our locks. The locks stay: they belong to
  // the open file description, which our mapping keeps alive until this
  // process ends (and which forked children do not inherit).
  void DropDescriptor();
  // Lets go of the descriptors; the mapping stays, and so does any lock.
  void Close();
  // Single-process jobs need neither the name nor the descriptor.
  void UnlinkAndClose() {
    Unlink();
    Close();
  }

  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  const std::string& name() const { return name_; }

 private:
  SharedSegment(std::string name, char* base, size_t bytes, int fd);
  std::string name_;
  char* base_ = nullptr;
  size_t bytes_ = 0;
  std::atomic<int> fd_{-1};     // the description our locks belong to, until dropped
  std::atomic<int> probe_{-1};  // a second open file description (no locks), for testing others' locks
};

// Unlinks segments named jax_symm-* in /dev/shm that are regular files owned
// by this user and locked by no live process. Never opens anything else,
// never blocks, never reads a header. Returns the names removed.
std::vector<std::string> ReapStaleSegments();

}  // namespace jax_symm
