"""``agentrl check-env``: run :func:`agentrl.env.check_env` on registered environments."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from typing import Any

from agentrl.env.checker import check_env, within
from agentrl.env.exploits import ExploitReport, check_exploits
from agentrl.env.registry import EnvNotFoundError, make, registered_ids, resolve_id
from agentrl.utils.extras import MissingExtra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentrl check-env",
        description="Check environments against the TextEnv contract: gymnasium's checker, seeding "
        "determinism, JSON-serialisable info, close() twice, and fuzzing with malformed actions. "
        "Prints one line per environment; exits 1 when any fails. With --all, environments whose optional "
        "dependencies are not installed are listed as skipped, with the pip command that installs them. With "
        "--exploits, also plays scripted cheats (empty, echoed, spammed and junk answers, junk tool calls, "
        "stopping at once) that must earn no reward, and the environment's oracle, which must earn full reward "
        "(agentrl.env.exploits).",
    )
    p.add_argument("env_ids", nargs="*", metavar="ID", help="environment ids, e.g. agentrl/Math-v0 or Math-v0")
    p.add_argument("--all", action="store_true", help="check every registered agentrl/ environment")
    p.add_argument("--seed", type=int, default=0, help="seed for resets and fuzz sampling (default: 0)")
    p.add_argument("--fuzz-samples", type=int, default=8, help="random fuzz actions per env, beside the fixed ones (default: 8)")
    p.add_argument("--check-timeout", type=float, default=300.0,
                   help="seconds each check of an environment may take; one that takes longer (a reset() or step() "
                   "that hangs) fails the environment (default: 300)")
    p.add_argument("--exploits", action="store_true",
                   help="also check that scripted cheats earn no reward (and an oracle(seed), if defined, earns full "
                   "reward); a cheat that earns reward fails the environment and its transcript is printed")
    p.add_argument("--exploit-seeds", type=int, default=3, help="seeds each cheat is played on, with --exploits (default: 3)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print gymnasium's warnings")
    p.add_argument("--signal", action="store_true",
                   help="instead of the contract checks, play a few rollouts of one environment with the real model "
                   "and report whether any group of episodes earned unequal rewards (GRPO's learning signal); "
                   "training flags after the id (--config, --model-path, --env-kwargs, --prompt-data, "
                   "--rollout-batch-size, --n-samples-per-prompt, ...) set the rollouts up as in training")
    p.add_argument("--signal-rollouts", type=int, default=2, help="rollouts to play with --signal (default: 2)")
    return p


def _split_training_flags(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """``argv`` of ``--signal`` as (check-env's own arguments and the environment id, the training flags with their
    values): a training flag takes the words after it up to the next ``--`` flag, so ``--config FILE`` is not read as
    an id (give the id before the training flags)."""
    own = {option: action for action in parser._actions for option in action.option_strings}
    ours: list[str] = []
    training: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        action = own.get(word.split("=", 1)[0])
        if action is not None:
            ours.append(word)
            if action.nargs != 0 and "=" not in word and i + 1 < len(argv):  # its value
                i += 1
                ours.append(argv[i])
        elif word.startswith("--"):
            training.append(word)
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                training.append(argv[i])
        else:
            ours.append(word)
        i += 1
    return ours, training


def _play_exploits(factory: Any, seeds: range, into: list[ExploitReport]) -> None:
    into.append(check_exploits(factory, seeds=seeds))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--signal" in argv:  # training flags (and their values) go to the training parser, not to ID
        ours, training = _split_training_flags(argv, parser)
        args = parser.parse_args(ours)
    else:
        args, training = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problems = [f"{flag} must be {what}; got {value:g}" for flag, value, ok, what in (
        ("--seed", args.seed, args.seed >= 0, ">= 0"), ("--fuzz-samples", args.fuzz_samples, args.fuzz_samples >= 0, ">= 0"),
        ("--check-timeout", args.check_timeout, args.check_timeout > 0, "> 0"),
        ("--exploit-seeds", args.exploit_seeds, args.exploit_seeds >= 1, ">= 1")) if not ok]
    if problems:
        print("agentrl check-env: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.signal:
        return signal_main(args, training)
    if training:
        print(f"agentrl check-env: unrecognized arguments: {' '.join(training)} (training flags go with --signal)",
              file=sys.stderr)
        return 2
    if args.all == bool(args.env_ids):
        print("agentrl check-env: give environment ids or --all (not both)", file=sys.stderr)
        return 2
    try:
        ids = registered_ids() if args.all else [resolve_id(i) for i in args.env_ids]
    except EnvNotFoundError as e:
        print(f"agentrl check-env: {e}", file=sys.stderr)
        return 2
    failed = skipped = 0
    for env_id in ids:
        start = time.perf_counter()
        oracle_checked, allowed = False, []
        try:
            factory = functools.partial(make, env_id)
            report = check_env(factory, seed=args.seed, fuzz_samples=args.fuzz_samples, timeout=args.check_timeout)
            if args.exploits:
                played: list[ExploitReport] = []
                try:
                    play = functools.partial(_play_exploits, factory, range(args.seed, args.seed + args.exploit_seeds),
                                             played)  # bound now: a timed-out check's thread outlives this loop pass
                    finished = within(play, args.check_timeout)
                except (Exception, SystemExit) as e:  # the env (or its oracle) broke while playing: a finding
                    report.problems.append(f"exploit check: raised {type(e).__name__}: {e}")
                    finished = False
                else:
                    if not finished:
                        report.problems.append(f"exploit check: did not finish within {args.check_timeout:g} s (a "
                                               "reset(), step() or oracle that hangs; --check-timeout sets the limit)")
                if finished:
                    exploits = played[0]
                    report.problems += [f"exploit check: {line}" for line in exploits.summary() if
                                        not line.startswith("allowed: ")]
                    allowed = [line for line in exploits.summary() if line.startswith("allowed: ")]
                    oracle_checked = exploits.oracle_checked
        except MissingExtra as e:  # an optional dependency: with --all, not this install's environment
            if not args.all:
                failed += 1
                print(f"FAIL  {env_id}: {e}")
            else:
                skipped += 1
                print(f"skip  {env_id}: {e}")
            continue
        except (Exception, SystemExit) as e:  # could not even build it (sys.exit() in its module included)
            failed += 1
            print(f"FAIL  {env_id}: could not be created: {type(e).__name__}: {e}")
            continue
        took = time.perf_counter() - start
        if report.ok:
            note = f", {len(report.warnings)} warnings" if report.warnings else ""
            note += (", no cheat earned reward" + (", oracle earned full reward" if oracle_checked else "")
                     if args.exploits else "")
            print(f"ok    {env_id}  ({took:.1f}s{note})")
            for line in allowed:
                print(f"      {line}")
        else:
            failed += 1
            print(f"FAIL  {env_id}  ({took:.1f}s)")
            for problem in report.problems:
                print("      - " + problem.replace("\n", "\n        "))
        if args.verbose:
            for w in report.warnings:
                print(f"      warning: {w}")
    tail = f", {skipped} skipped (optional dependencies not installed)" if skipped else ""
    print(f"{len(ids) - failed - skipped} passed, {failed} failed{tail}")
    return 1 if failed else 0


def signal_main(args: argparse.Namespace, rest: list[str]) -> int:
    """``--signal``: :func:`agentrl.rollout.signal.check_signal` on one environment; exit 0 when some group had
    unequal rewards, 1 when none had, 2 for a bad command line."""
    import asyncio

    from agentrl.config import ConfigError, parse_args
    from agentrl.rollout.signal import check_signal, signal_verdict

    if len(args.env_ids) > 1 or args.all or args.signal_rollouts < 1:
        print("agentrl check-env --signal: give at most one environment id (none: the --config's) and "
              "--signal-rollouts >= 1", file=sys.stderr)
        return 2
    try:
        env = [] if not args.env_ids else ["--env", resolve_id(args.env_ids[0])]
        cfg = parse_args([*rest, *env, "--seed", str(args.seed)], prog="agentrl check-env --signal")
    except (ConfigError, EnvNotFoundError) as e:
        print(f"agentrl check-env --signal: {e}", file=sys.stderr)
        return 2
    if cfg.env is None:
        print("agentrl check-env --signal: name the environment (an id, or --config with env:)", file=sys.stderr)
        return 2
    print(f"{cfg.env}: {args.signal_rollouts} rollout(s) of {cfg.rollout_batch_size} prompts x "
          f"{cfg.rollout.n_samples_per_prompt} episodes with {cfg.model_path}, no training")
    rows = asyncio.run(check_signal(cfg, args.signal_rollouts))
    for k, m in enumerate(rows):
        print(f"rollout {k}: reward {m.get('rollout/reward_mean', 0.0):.3f}, groups with equal rewards "
              f"{m.get('signal/equal_reward_groups', 1.0):.0%} (all 0: {m.get('signal/all_zero_groups', 0.0):.0%}), "
              f"truncated {m.get('rollout/status_truncated', 0.0):.0%}, timed out {m.get('rollout/timed_out', 0.0):.0%}, "
              f"{m.get('rollout/time', 0.0):.0f} s")
    ok, line = signal_verdict(rows)
    print(line)
    return 0 if ok else 1
