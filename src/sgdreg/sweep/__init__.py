"""Sweeps: a grid of runs vmapped into one compiled program per group, sharded over devices,
checkpointed every chunk and resumable after a kill at any point.

Grid file (TOML, read with ``tomllib``; ``grid.py``)::

    name = "digits-lr-seed"          # optional label (default: the file's stem)

    [base]                           # RunConfig fields shared by every run
    dataset = "digits"
    optimizer = "sgd"
    steps = 300
    log_every = 30

    [grid]                           # RunConfig fields with a list of values each; the runs are
    seed = [0, 1, 2, 3]              # the Cartesian product, in file order (last key fastest)
    lr = [0.01, 0.05, 0.2]
    momentum = [0.0, 0.9]            # (needs optimizer = "momentum" to matter)

Any ``RunConfig`` field may appear in either table (``[grid]`` scalars count as one value; a field
may not be in both). ``corruption`` needs ``randomization`` set to a label kind. The Python API
also takes a parsed mapping, a ``Grid`` or a list of ``RunConfig`` (``as_grid``).

Execution (``plan.py``, ``run.py``). Runs are grouped by static structure: everything except
``seed``, ``lr``, ``momentum``, ``egr`` (its value; whether μ > 0 is static), ``randomization``
and ``corruption`` (which change the data's values but not its shapes) must agree within a
group. A group is one compiled program (``sweep_chunk``, compiled once per group shape): the
engine's chunk (``engine.advance_chunk``: the dynamics' ``advance`` over n steps, then
``probes.cheap_metrics``) ``vmap``ped over blocks of runs, with θ0 from each run's seed
(``training.build``), ``Hyper`` (h, β, μ) and keys per run. Label corruption and seed-dependent
(synthetic) data are vmapped as per-run data arrays when the group's runs differ in data
(memory: one dataset copy per run); otherwise the data are shared (one copy, broadcast).
Optimizer, batch size, width and dataset split groups; so do steps and log_every (same compiled
program, different schedule). Flows (``flow``, ``modified-flow``) are vmapped like every other
dynamics: one ``diffeqsolve`` per chunk per run over [k·h, (k + n)·h], so flows with different h
share a group (``rtol``/``atol`` are static and split groups).

A sweep run gives the trace ``training.train`` (``engine.execute``) gives for its config alone,
up to float reassociation under ``vmap`` (tested for discrete methods and flows). A run that
goes non-finite is frozen by ``TrainState.diverged_at`` and marked ``diverged`` at its step (a
discrete run keeps its row at that step); a flow whose solver stops early (max steps) is frozen
by ``TrainState.failed`` and marked ``failed``, without a row, as in ``engine.execute``. No value
crosses between runs, so neither changes any other run (tested bit for bit). ``stop_loss`` is
applied as in ``engine.execute``: a run whose logged train_loss (after step 0) is ≤ its
``stop_loss`` is marked ``completed`` ("reached train_loss ≤ L* at step k") with that row last,
and frozen from then on by ``TrainState.stopped`` (its saved model is the one at step k).

Devices (``run.py``). The run axis is sharded over the chosen devices (``Mesh`` with axis
``"runs"``, ``NamedSharding(PartitionSpec("runs"))``, ``shard_map``); each device loops over its
blocks of ``block`` runs (default min(8, runs in the group)). The run count is padded to whole
blocks on every device (a multiple of the device count) with copies of the last run, discarded.
A run's arithmetic depends on its block size and on whether the data are shared, never on the
device count or the other runs: 1 and n devices give bit-identical traces. Shared data are
replicated. Multi-host: call ``jax.distributed.initialize()`` first
(``run_sweep(..., distributed=True)`` or ``sgdreg sweep --distributed``, configured by JAX's
usual environment/cluster detection); every process builds the same inputs, the mesh spans all
global devices, results are gathered with ``multihost_utils.process_allgather`` and only
process 0 writes files. ``out_dir`` must then be on a filesystem all processes share (they read
checkpoints on resume). Memory: ``estimate_memory`` (``memory.py``; ``sgdreg sweep --dry-run``).

Output directory::

    sweep.json                  index: grid, groups, runs (config, status, trace path, summary)
    summary.csv                 one row per run: grid values, status, final metrics
    traces/<run_id>.json        one trace per run (trace schema, ``sgdreg trace validate``)
    checkpoints/group-NNN.json  committed progress of a group (step, chunk, status per run)
    checkpoints/group-NNN.rows.jsonl   its trace rows, one line per chunk (append-only)
    checkpoints/group-NNN.cKKKKK.eqx   its stacked TrainState after chunk KKKKK (latest only;
                                removed when the group finishes)
    models/<run_id>.eqx         final models (``save_models=True``; ``checkpoint.load_model``)

Resume. After every chunk: the chunk's rows appended past the committed length → state file
(the stacked ``TrainState``, ``eqx.tree_serialise_leaves``, keys as key data, atomic) → group
JSON naming both (atomic: the commit point) → older state files removed. Traces, index and
table are views of the commits, rewritten atomically when a group finishes and otherwise at most
every ``run.VIEW_EVERY_S`` seconds. ``resume=True`` reloads each group's last commit and
continues; finished groups are kept as they are, so a finished run is never lost or re-run; a
group with no commit restarts. A resumed run is bit-identical to an uninterrupted one. Every
committed file (index, group files, rows, state-file headers) is read and checked before
anything is written, so a bad one fails with one line naming it and changes nothing; resuming a
finished sweep changes no file at all. The index's ``wall_time_s`` sums the sessions.

Across processes and hosts (``shard.py``): ``run_sweep(..., shard=(i, N))`` / ``sgdreg sweep
--shard i/N`` runs shard i of N (runs sorted by the sha256 of their config, dealt round-robin)
into an output directory all shards share (commits under ``shards/<i>-of-<N>/``, a manifest
``shards.json`` pinning the grid and N, the index merged from every shard's commits under a
``flock``); ``sweep_status`` / ``--status`` merges what exists. A run's numbers are those of the
unsharded sweep, bit for bit.

One writer at a time: ``run_sweep`` holds ``out_dir``'s lock (``sgdreg.locking``; another
live writer gets ``LockError``). Between chunks it honours ``engine.STOP`` (the CLI's SIGINT and
SIGTERM): the unfinished runs' traces and the index are marked ``interrupted`` and
KeyboardInterrupt is raised; ``--resume`` continues from the last commit.
"""

from .grid import SHORT as SHORT
from .grid import Grid as Grid
from .grid import as_grid as as_grid
from .grid import label as label
from .grid import load_grid as load_grid
from .grid import parse_grid as parse_grid
from .memory import DEFAULT_BLOCK as DEFAULT_BLOCK
from .memory import dataset_shape as dataset_shape
from .memory import estimate_memory as estimate_memory
from .memory import format_bytes as format_bytes
from .plan import PER_RUN_FIELDS as PER_RUN_FIELDS
from .plan import Group as Group
from .plan import Plan as Plan
from .plan import Run as Run
from .plan import data_key as data_key
from .plan import plan_sweep as plan_sweep
from .plan import static_key as static_key
from .run import GROUP_SCHEMA as GROUP_SCHEMA
from .run import INDEX_SCHEMA as INDEX_SCHEMA
from .run import SUMMARY_COLUMNS as SUMMARY_COLUMNS
from .run import TRACE_COUNTS as TRACE_COUNTS
from .run import VIEW_EVERY_S as VIEW_EVERY_S
from .run import ProgressFn as ProgressFn
from .run import RunConsts as RunConsts
from .run import SweepResult as SweepResult
from .run import check_sweep_dir as check_sweep_dir
from .run import load_commit as load_commit
from .run import run_sweep as run_sweep
from .run import select_devices as select_devices
from .run import summary_table as summary_table
from .run import sweep_chunk as sweep_chunk
from .shard import assignment as assignment
from .shard import config_hash as config_hash
from .shard import grid_hash as grid_hash
from .shard import merge_index as merge_index
from .shard import parse_shard as parse_shard
from .shard import shard_plan as shard_plan
from .shard import sweep_status as sweep_status
