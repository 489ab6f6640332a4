#include "host_segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

namespace jax_symm {
namespace {

// Byte 0 is held (shared) by every process that has the segment mapped, so a
// clean-up that can write-lock the whole file knows nobody is left. Rank r's
// lock is byte 1 + r. Locks are advisory and may lie past the end of the file.
constexpr off_t kAliveByte = 0;
off_t RankByte(int64_t rank) { return 1 + static_cast<off_t>(rank); }

constexpr char kPrefix[] = "jax_symm-";
constexpr size_t kNameHexDigits = 32;

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

// F_OFD_SETLK on [start, start+len) (len 0: to the end of any file size).
bool TryLock(int fd, short type, off_t start, off_t len) {
  struct flock lk;
  std::memset(&lk, 0, sizeof(lk));
  lk.l_type = type;
  lk.l_whence = SEEK_SET;
  lk.l_start = start;
  lk.l_len = len;
  return fcntl(fd, F_OFD_SETLK, &lk) == 0;
}

// The problems with a segment another process created, or "" if none. The
// mode is judged only once the file has its full size: the creator sets it
// (fchmod) before sizing the file, and a narrow umask may leave it briefly
// narrower than 0600 before that.
std::string Untrusted(const struct stat& st, size_t max_bytes) {
  if (!S_ISREG(st.st_mode)) return "it is not a regular file";
  if (st.st_uid != geteuid()) {
    return "it is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " +
           std::to_string(geteuid()) + ")";
  }
  if (static_cast<uint64_t>(st.st_size) >= max_bytes && (st.st_mode & 07777) != 0600) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return std::string("its mode is ") + mode + ", not 0600";
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return "it holds " + std::to_string(st.st_size) + " bytes, more than the " +
           std::to_string(max_bytes) + " expected";
  }
  return "";
}

Error Refuse(const std::string& name, const std::string& why) {
  return Internal("refusing shared-memory segment /dev/shm" + name + ": " + why +
                  ". It was not made by this job (another user or process may be using "
                  "jax_symm's names); remove it if it is stale.");
}

// What kind of thing a refused name is, for the message.
std::string Describe(const std::string& name) {
  struct stat st;
  const std::string path = "/dev/shm" + name;
  if (fstatat(AT_FDCWD, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return "";
  if (S_ISDIR(st.st_mode)) return "it is a directory";
  if (S_ISSOCK(st.st_mode)) return "it is a socket";
  if (S_ISFIFO(st.st_mode)) return "it is a FIFO";
  if (S_ISLNK(st.st_mode)) return "it is a symbolic link";
  if (!S_ISREG(st.st_mode)) return "it is not a regular file";
  if (st.st_uid != geteuid()) {
    return "it is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " +
           std::to_string(geteuid()) + ")";
  }
  return "";
}

}  // namespace

// The mapping is not passed on to forked children (multiprocessing, data
// loaders): the mapping keeps our open file description, and with it our
// liveness locks, alive; inherited by a child, it would keep a killed peer
// looking alive for as long as the child lives.
Error KeepFromChildren(const std::string& name, void* base, size_t bytes) {
  if (madvise(base, bytes, MADV_DONTFORK) != 0) {
    return Internal(Errno("madvise(MADV_DONTFORK) on /dev/shm" + name));
  }
  return Error::Success();
}

SharedSegment::SharedSegment(std::string name, char* base, size_t bytes, int fd)
    : name_(std::move(name)), base_(base), bytes_(bytes), fd_(fd) {}

void SharedSegment::DropDescriptor() {
  if (int fd = fd_.exchange(-1); fd >= 0) close(fd);
}

void SharedSegment::Close() {
  DropDescriptor();
  if (int fd = probe_.exchange(-1); fd >= 0) close(fd);
}

ErrorOr<SharedSegment*> SharedSegment::Create(const std::string& name, size_t bytes) {
  for (int attempt = 0;; ++attempt) {
    int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) {
        const std::string what = Describe(name);
        return Refuse(name, "it exists already" + (what.empty() ? "" : " (" + what + ")"));
      }
      return Internal(Errno("cannot create /dev/shm" + name));
    }
    // Alive at once, so a concurrent clean-up cannot take it for stale. If a
    // clean-up got there first it is about to unlink the name: start over.
    if (!TryLock(fd, F_RDLCK, kAliveByte, 1)) {
      close(fd);
      if (attempt < 50) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      return Internal(Errno("cannot lock /dev/shm" + name));
    }
    // A clean-up may have unlinked the name between our open and our lock;
    // once we hold the lock it cannot, so a name still linked now stays ours.
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_nlink == 0) {
      close(fd);
      if (attempt < 50) continue;
      return Internal("/dev/shm" + name + " kept disappearing while it was created");
    }
    auto fail = [&](Error err) -> Error {
      close(fd);
      shm_unlink(name.c_str());
      return err;
    };
    // The umask may have narrowed the mode; peers insist on exactly 0600.
    if (fchmod(fd, 0600) != 0) return fail(Internal(Errno("fchmod /dev/shm" + name)));
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      return fail(Internal(Errno("cannot size /dev/shm" + name + " to " +
                                 std::to_string(bytes) + " bytes")));
    }
    // ftruncate only makes a sparse file: without reserving the pages now, a
    // full /dev/shm would kill the process with SIGBUS at the first copy.
    if (int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
      return fail(Internal("cannot reserve " + std::to_string(bytes) + " bytes in /dev/shm for " +
                           name + ": " + std::strerror(err) +
                           " (enlarge /dev/shm, e.g. docker --shm-size, or send less per call)"));
    }
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return fail(Internal(Errno("mmap /dev/shm" + name)));
    if (Error err = KeepFromChildren(name, base, bytes); err.failure()) {
      munmap(base, bytes);
      return fail(std::move(err));
    }
    return new SharedSegment(name, static_cast<char*>(base), bytes, fd);
  }
}

ErrorOr<SharedSegment*> SharedSegment::Open(const std::string& name, size_t bytes,
                                            double timeout_s,
                                            const std::function<Error()>& abandon) {
  const auto deadline = std::chrono::steady_clock::now() + WaitFor(timeout_s);
  auto wait_or = [&](const std::string& what) -> Error {
    if (abandon) JAX_SYMM_RETURN_IF_ERROR(abandon());
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded(
          "waited " + std::to_string(timeout_s) + " s for /dev/shm" + name + " " + what +
          "; the process that serves rank 0 of this group creates it when it lowers the same "
          "program. Either it has not lowered this program (every process must lower the same "
          "programs), or its program differs from this one before this call: a value that "
          "differs between processes changed an operation's shape or type, or Python control "
          "flow (on jax.process_index(), say) traced different operations; or it still holds "
          "an executable of this program from before jax.clear_caches() while this process "
          "built it anew (JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets this wait).");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return Error::Success();
  };
  while (true) {
    // O_NONBLOCK: a FIFO planted under our name must not block the open.
    int fd = shm_open(name.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) {
      if (errno == ENOENT) {
        JAX_SYMM_RETURN_IF_ERROR(wait_or("to appear"));
        continue;
      }
      const int err = errno;
      if (std::string what = Describe(name); !what.empty()) return Refuse(name, what);
      errno = err;
      return Internal(Errno("cannot open /dev/shm" + name));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      Error err = Internal(Errno("fstat /dev/shm" + name));
      close(fd);
      return err;
    }
    if (std::string why = Untrusted(st, bytes); !why.empty()) {
      close(fd);
      return Refuse(name, why);
    }
    // The creator is still sizing it, or a clean-up holds it: look again.
    if (static_cast<size_t>(st.st_size) < bytes || !TryLock(fd, F_RDLCK, kAliveByte, 1)) {
      close(fd);
      JAX_SYMM_RETURN_IF_ERROR(wait_or("to reach " + std::to_string(bytes) + " bytes"));
      continue;
    }
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
      Error err = Internal(Errno("mmap /dev/shm" + name));
      close(fd);
      return err;
    }
    if (Error err = KeepFromChildren(name, base, bytes); err.failure()) {
      munmap(base, bytes);
      close(fd);
      return err;
    }
    return new SharedSegment(name, static_cast<char*>(base), bytes, fd);
  }
}

Error SharedSegment::HoldRank(int64_t rank) {
  if (!TryLock(fd_.load(), F_RDLCK, RankByte(rank), 1)) {
    return Internal(Errno("cannot take the liveness lock of rank " + std::to_string(rank) +
                          " in /dev/shm" + name_));
  }
  if (probe_.load() < 0) {
    // Another open file description of the same file: its lock queries
    // conflict with our own locks too, so "held" covers this process's ranks.
    const std::string self = "/proc/self/fd/" + std::to_string(fd_.load());
    const int probe = open(self.c_str(), O_RDWR | O_CLOEXEC);
    if (probe < 0) return Internal(Errno("cannot reopen " + self));
    probe_.store(probe);
  }
  return Error::Success();
}

bool SharedSegment::RankHeld(int64_t rank) const {
  const int probe = probe_.load();
  if (probe < 0) return true;  // cannot tell: never call a peer dead on a guess
  struct flock lk;
  std::memset(&lk, 0, sizeof(lk));
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  lk.l_start = RankByte(rank);
  lk.l_len = 1;
  if (fcntl(probe, F_OFD_GETLK, &lk) != 0) return true;
  return lk.l_type != F_UNLCK;
}

void SharedSegment::Unmap() {
  Close();
  if (base_ != nullptr) munmap(base_, bytes_);
  base_ = nullptr;
}

void SharedSegment::Unlink() const { shm_unlink(name_.c_str()); }

std::vector<std::string> ReapStaleSegments() {
  std::vector<std::string> removed;
  int dir_fd = open("/dev/shm", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return removed;
  DIR* dir = fdopendir(dir_fd);
  if (dir == nullptr) {
    close(dir_fd);
    return removed;
  }
  const size_t prefix_len = sizeof(kPrefix) - 1;
  while (dirent* entry = readdir(dir)) {
    const std::string file = entry->d_name;
    // Only names of the form jax_symm makes: the prefix and 32 hex digits.
    if (file.size() != prefix_len + kNameHexDigits || file.compare(0, prefix_len, kPrefix) != 0 ||
        file.find_first_not_of("0123456789abcdef", prefix_len) != std::string::npos) {
      continue;
    }
    struct stat before;
    if (fstatat(dir_fd, file.c_str(), &before, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(before.st_mode) || before.st_uid != geteuid()) {
      continue;  // not ours to judge
    }
    int fd = openat(dir_fd, file.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    const bool same = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
                      st.st_ino == before.st_ino && st.st_dev == before.st_dev;
    // A write lock over everything succeeds only if no live process holds the
    // segment; while we hold it, no process can start using it either.
    if (same && TryLock(fd, F_WRLCK, 0, 0) && unlinkat(dir_fd, file.c_str(), 0) == 0) {
      removed.push_back("/" + file);
    }
    close(fd);
  }
  closedir(dir);
  return removed;
}

}  // namespace jax_symm
