"""The audit writer: a process of its own, one per journal, that moves journaled audit records
into the hash-chained, HSM-sealed log (kms.service.audit_chainer), so that the process serving
calls spends none of its GIL on hashing, SQL or sealing. ``WriterProcess`` starts and watches it
from the serving process; ``python -m kms.audit_writer`` is the process itself."""

from kms.audit_writer.process import WriterConfig, WriterProcess

__all__ = ["WriterConfig", "WriterProcess"]
