#!/usr/bin/env python3
"""What SQLite commits a second on this machine with no engine at all: the reference for the
durable row of `tthc bench` (docs/performance.md, target 2).

WAL, synchronous=NORMAL (the store's settings), one transaction after another from one
thread. Two shapes: a transaction that inserts one row, and one shaped like a tthc command
(update a dossier row under three indexes, insert three events under their primary key,
replace a task row, upsert a job row).

    python3 bench/sqlite-commit-rate.py [TRANSACTIONS]
"""
import os
import sqlite3
import sys
import tempfile
import time


def connect(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    return c


def one_row(c, n):
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.time()
    for _ in range(n):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        c.execute("COMMIT")
    return n / (time.time() - start)


def command_shaped(c, n):
    c.executescript(
        """
        CREATE TABLE d (code TEXT PRIMARY KEY, status INT, seq INT, upd INT, due INT, agency TEXT);
        CREATE INDEX d1 ON d (agency, status); CREATE INDEX d2 ON d (due); CREATE INDEX d3 ON d (upd);
        CREATE TABLE e (code TEXT, seq INT, payload TEXT, hash BLOB, PRIMARY KEY (code, seq));
        CREATE TABLE t (code TEXT, id TEXT, role TEXT, due INT, PRIMARY KEY (code, id));
        CREATE INDEX t1 ON t (role, due);
        CREATE TABLE j (code TEXT, id TEXT, state TEXT, run_at INT, PRIMARY KEY (code, id));
        CREATE INDEX j1 ON j (state, run_at);
        """
    )
    codes = [f"000.00.01.H59-261206-{i:04d}" for i in range(2000)]
    for code in codes:
        c.execute("INSERT INTO d VALUES (?, 0, 0, 0, 0, 'A')", (code,))
    start = time.time()
    for i in range(n):
        code, seq = codes[i % len(codes)], i // len(codes) * 3
        events = []
        for k in (1, 2, 3):
            events += [code, seq + k, "p" * 150, os.urandom(32)]
        c.execute("BEGIN IMMEDIATE")
        c.execute(
            "UPDATE d SET status = ?, seq = ?, upd = ?, due = ? WHERE code = ?",
            (i % 9, seq + 3, i, i, code),
        )
        c.execute("INSERT INTO e VALUES (?, ?, ?, ?), (?, ?, ?, ?), (?, ?, ?, ?)", events)
        c.execute("DELETE FROM t WHERE code = ?", (code,))
        c.execute("INSERT INTO t VALUES (?, ?, 'role', ?)", (code, f"t{i}", i))
        c.execute(
            "INSERT INTO j VALUES (?, ?, 'pending', ?) "
            "ON CONFLICT (code, id) DO UPDATE SET state = excluded.state",
            (code, f"j{i % 5}", i),
        )
        c.execute("COMMIT")
    return n / (time.time() - start)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as d:
        for name, run in (("one row", one_row), ("command-shaped", command_shaped)):
            rate = run(connect(os.path.join(d, name.replace(" ", "-") + ".db")), n)
            print(f"{name:>15}: {rate:,.0f} commits/s ({n} transactions)")


if __name__ == "__main__":
    main()
