"""Ray Data: memscope inside every ``map_batches`` worker, one report for the whole job.

Needs the ``ray`` extra (``pip install 'memscope[ray]'``); importing this module does not
import Ray, and the first call that needs it says how to install it when it is missing.

- :func:`managed` wraps a ``map_batches`` callable class (or function): in each actor, its
  batches run inside one long-lived ``managed_batch`` on the actor's own device, split into smaller
  chunks when memory runs out (every row still comes out exactly once, in order), and the
  chunk size that worked is kept for the actor's next batches.
- :class:`ReportCollector` is started on the driver; each actor reports its figures to it
  after every batch without waiting, and :meth:`ReportCollector.report` gives the job's
  :class:`RayJobReport`: one :class:`ActorReport` row per actor (per incarnation, when Ray
  restarted one that died), each with an :class:`ActorBatchReport`, in the
  :class:`~memscope.reports.CombinedReport` shape that :mod:`memscope.distributed` gives a
  torchrun job, with JSON and CSV export.
- :func:`actor_device` is the device memscope manages in the calling worker.

::

    collector = ReportCollector()
    colorized = ray.data.range(10_000).map_batches(
        managed(Colorize, collector=collector),
        fn_constructor_args=(checkpoint,),
        compute=ray.data.ActorPoolStrategy(size=4),
        num_gpus=1,
        batch_size=64,
    )
    colorized.write_parquet(output)
    print(collector.report())
"""

from memscope.ray._collector import ReportCollector
from memscope.ray._report import ActorBatchReport, ActorReport, RayJobReport
from memscope.ray._wrap import actor_device, managed

__all__ = [
    "ActorBatchReport",
    "ActorReport",
    "RayJobReport",
    "ReportCollector",
    "actor_device",
    "managed",
]
