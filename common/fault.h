// Test-only fault injection: QFORGE_FAULT=<point>:<rank>[:<action>[:<count>]] makes rank <rank> kill
// (action "kill", SIGKILL, the default) or stop (action "stop", SIGSTOP) itself, or throw an
// InternalError (action "throw", a failing unit), or send itself SIGUSR1 (action "usr1", the stop
// signal a Slurm time-limit warning delivers), the <count>-th time (default 1st) it reaches the
// named point. Resume and lost-worker tests use it to crash a run at an
// exact, repeatable place. Points are listed where fault_point() is called; `qforge quantize --help`
// does not advertise this: it is for tests.
#pragma once

#include <string>

namespace qforge {

// Reads QFORGE_FAULT once; `rank` is this process's world rank.
void configure_fault_injection(int rank);
// Dies or stops here if QFORGE_FAULT names this point and rank.
void fault_point(const char* point);

}  // namespace qforge
