// Who in a multi-process CPU job still takes part, and if not, why.
//
// One small segment per job, made by process 0 at set-up and opened by the
// others (guarded like every window by SharedSegment: secret name, exclusive
// create, owner and mode checks), holds one record per process:
//  - its liveness lock, byte 1 + process, taken at set-up and held through
//    the mapping for the rest of the process's life: the kernel drops it when
//    the process dies, however it dies (killed, os._exit, a zombie), across
//    PID namespaces, and a forked child does not inherit it;
//  - a state word and a reason: a process that leaves through the
//    interpreter's normal exit (an uncaught exception, Ctrl-C, the end of its
//    main program) writes why and marks itself gone from sys.excepthook /
//    atexit, *before* jax.distributed's shutdown blocks it with the lock still
//    held (jax_symm/_liveness.py);
//  - its last few set-up failures (a window it could not create), so that
//    peers waiting for that window give up at once with the cause.
// Waiters (barriers, window openers) ask it about the processes they wait
// for. One descriptor per process (a probe for lock queries) for the whole job,
// however many windows it has.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

// Creates (process 0) or opens the job's record and claims `process`'s
// entry in it. Once per process; a second call is an error.
Error JoinJob(const std::string& name, int64_t process, int64_t num_processes, bool create,
              double timeout_s);

// Which process serves each global device (set at set-up, for every device).
void SetDeviceProcesses(const std::vector<int64_t>& device_ids,
                        const std::vector<int64_t>& processes);
// The process serving `device`, or -1 when unknown.
int64_t ProcessOfDevice(int64_t device);

// Why `process` no longer takes part, e.g. "process 1 (pid 4242) raised an
// uncaught ValueError: ...", or "" while it may still (it lives, it is this
// process, or there is no job record to ask).
std::string ProcessGone(int64_t process);

// This process is leaving the job: `why` ("raised an uncaught ..."). The
// first reason stays. Safe to call more than once, and without a record.
void LeaveJob(const std::string& why);

// A set-up step of this process failed for the window `name`: peers waiting
// for that window are told `why`.
void RecordSetupFailure(const std::string& name, const std::string& why);
// What `process` recorded for the window `name`, or "".
std::string SetupFailure(int64_t process, const std::string& name);

}  // namespace jax_symm
