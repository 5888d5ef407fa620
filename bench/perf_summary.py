#!/usr/bin/env python3
"""perf_summary.py - turns bench/profile.sh's raw perf output into per-message figures.

  perf_summary.py stat FILE MESSAGES PID      perf stat --per-thread output: events per message
  perf_summary.py record FILE PID             perf script -F comm,tid,ip,sym,dso output of a
                                              --call-graph dwarf recording: where the CPU goes

Threads are named "<comm>-<tid>"; the thread whose tid is PID is "main". In the
record summary each sample is charged to the system call it sits in (the
kernel frame under do_syscall_64), or to "user" (with its leaf function), and
to the first frame of the bridge or of its two libraries above it.
"""
import collections
import re
import sys

APP_DSOS = ("mqtt2amqp", "libmosquitto", "librabbitmq")


def thread_name(comm, tid, pid):
    return "main" if tid == pid else "%s-%s" % (comm, tid)


def stat(path, messages, pid):
    rows = collections.OrderedDict()
    for line in open(path):
        # "  m2a-mqtt-123     4,567      syscalls:sys_enter_read"  or  "... 12.3 msec cpu-clock"
        m = re.match(r"\s*(\S+?)-(\d+)\s+([\d,.]+)\s+(?:msec\s+)?(\S+)", line)
        if not m:
            continue
        comm, tid, val, ev = m.groups()
        try:
            v = float(val.replace(",", ""))
        except ValueError:
            continue
        rows.setdefault(ev, collections.Counter())[thread_name(comm, tid, pid)] += v
    print("%-34s %10s   %s" % ("event", "per msg", "per thread"))
    for ev, by in rows.items():
        total = sum(by.values())
        if total == 0:
            continue
        unit = 1000.0 if ev == "cpu-clock" else 1.0  # msec -> us
        name = "CPU us (cpu-clock)" if ev == "cpu-clock" else ev.replace("syscalls:sys_enter_", "")
        per = "  ".join(
            "%s %.3f" % (t, v * unit / messages) for t, v in sorted(by.items()) if v * unit / messages >= 0.0005
        )
        print("%-34s %10.3f   %s" % (name, total * unit / messages, per))


def parse_script(path):
    samples, cur = [], None
    for line in open(path):
        line = line.rstrip("\n")
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
            continue
        if not line[0].isspace():
            parts = line.split()
            cur = (parts[0], parts[1], [])  # comm, tid, frames
            continue
        m = re.match(r"\s+[0-9a-f]+ (.*) \((.*)\)$", line)
        if m and cur is not None:
            cur[2].append((m.group(1), m.group(2)))
    if cur:
        samples.append(cur)
    return samples


def short_dso(d):
    return d.split("/")[-1].split(".so")[0]


def record(path, pid):
    samples = parse_script(path)
    total = len(samples)
    if not total:
        print("no samples")
        return
    by_thread = collections.Counter()
    by_sys = collections.Counter()
    by_site = collections.Counter()
    by_leaf = collections.Counter()
    for comm, tid, frames in samples:
        th = thread_name(comm, tid, pid)
        by_thread[th] += 1
        syms = [s for s, _ in frames]
        if "do_syscall_64" in syms:
            i = syms.index("do_syscall_64") - 1
            while i > 0 and syms[i] == "x64_sys_call":
                i -= 1
            if i < 0:
                what = "syscall entry/exit"
            elif syms[i] == "exit_to_user_mode_loop":
                what = "syscall exit: rescheduled"
            else:
                what = "syscall " + re.sub(r"^(__x64_sys_|__se_sys_|__do_sys_|ksys_|__sys_|do_sys_)", "", syms[i])
        elif frames and "kernel" in frames[0][1]:
            what = "kernel (interrupts)"
        else:
            what = "user"
        site = "?"
        for s, d in frames:
            if any(a in d for a in APP_DSOS):
                site = "%s [%s]" % (s.split("+")[0], short_dso(d))
                break
        by_sys[(th, what)] += 1
        by_site[(th, what, site)] += 1
        if what == "user" and frames:
            by_leaf[(th, "%s [%s]" % (frames[0][0], short_dso(frames[0][1])))] += 1

    def pct(n):
        return 100.0 * n / total

    print("%d samples" % total)
    for th, n in by_thread.most_common():
        print("  %5.1f%%  thread %s" % (pct(n), th))
    print("\nby thread and system call (or user space):")
    for (th, what), n in by_sys.most_common(20):
        print("  %5.1f%%  %-22s %s" % (pct(n), th, what))
    print("\nby thread, system call and the first bridge/library frame above it:")
    for (th, what, site), n in by_site.most_common(25):
        print("  %5.1f%%  %-22s %-26s %s" % (pct(n), th, what, site))
    print("\nuser-space leaf functions:")
    for (th, f), n in by_leaf.most_common(25):
        print("  %5.1f%%  %-22s %s" % (pct(n), th, f))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "stat":
        stat(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
