"""The one output encoder: engine outputs -> the bytes every runner writes.

``process-file``, ``replay`` and the worker turn the engine's outputs
(``(topic index, key, value)``, core/model.py) into records here and nowhere
else, so the three write the same bytes for the same outputs:

* **topic**: the output's index into the runner's topic names (events,
  sessions, dead letters; ``replay`` prefixes them, files name them
  ``DIR/<topic>.jsonl``);
* **key**: a session key is written as its UTF-8 bytes; a dead letter keeps
  the source record's key bytes unchanged (§7.3), and has no key when the
  source record had none;
* **value**: ``codec.dumps`` of the output (a file line is the same bytes
  followed by ``\\n``);
* **partition** (broker runners): :func:`partition_for`: a keyed record goes
  where the Java client's default partitioner puts its key (murmur2), a
  keyless one where murmur2 of its value says, so a rerun puts every record in
  the same partition (docs/decisions.md#input-and-outputs).

:meth:`OutputEncoder.records` is the one place where the outputs of one engine
step become records to write, called right after the step with the engine that
made it (``sessionizer.run.driver`` for files and replay, the worker's
``Pipeline._publish``). The ``integrations.<name>`` topics
(docs/integrations.md) are written here too: the step's outputs translated
(``sessionizer.integrations.translate_keyed``) with the engine to look
sessions up in and the runner's ``Options`` (from its settings), keyed by the
device, their translation dead letters to the dead-letters topic keyed as the
§7 output they come from, all in the step's records, so they go out in the
same send as the other outputs (the worker's crash guarantees, before the
changelog and marker). A step is not the same size everywhere (a record and
its expiry in ``process-file`` and ``replay``, a batch in the worker), so what
is written for some outputs must not depend on how they were split into steps:
the engine lookup gives each step the same session facts a one-pass
translation finds in the session records (``process-file --integrations``
translates its files in one pass, ``integrations.write_files``;
``tests/test_integrations.py`` checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from .. import codec
from ..core.engine import Engine
from ..core.model import DEAD_LETTERS, TOPIC_NAMES, Output

if TYPE_CHECKING:
    from ..integrations import Options

__all__ = ["Message", "OutputEncoder", "Record", "partition_for", "record_hash"]

# (topic, key, value, partition) for a producer; partition None: decide with
# partition_for. A None value is a tombstone (the worker's changelog writes them).
Message = tuple[str, bytes | None, bytes | None, int | None]
# An encoded output: a Message that always has a value.
Record = tuple[str, bytes | None, bytes, int | None]


def record_hash(data: bytes) -> int:
    """The positive murmur2 hash of the Java client's default partitioner."""
    return int((_MURMUR2 or _load_murmur2())(data) & 0x7FFFFFFF)


_MURMUR2: Callable[[bytes], int] | None = None


def _load_murmur2() -> Callable[[bytes], int]:
    # On first use: importing aiokafka is a third of process-file's start-up.
    global _MURMUR2
    from aiokafka.partitioner import murmur2

    _MURMUR2 = cast("Callable[[bytes], int]", murmur2)
    return _MURMUR2


def partition_for(key: bytes | None, value: bytes | None, partitions: int) -> int:
    """The partition of a record of a topic with ``partitions`` partitions.

    A keyed record: murmur2 of the key, as the Java client's (and aiokafka's)
    default partitioner, so keys land where other clients put them. A keyless
    record (a dead letter of a source record without a key): murmur2 of the
    value instead of a random partition, so two runs over the same input write
    the same partitions.
    """
    return record_hash(key if key is not None else (value or b"")) % partitions


class OutputEncoder:
    """Encodes engine outputs for one runner's topics.

    ``topics``: the names of the engine's output topics in engine order
    (``TOPIC_NAMES`` for files). ``line``: file runners, whose values end with
    ``\\n`` (the same bytes as a broker value, plus the newline, written by
    orjson in one go). ``integrations``: destination name -> the topic of its
    records (``Settings.topics.integration(name)``), in the order to write them.
    ``options``: the translations' options (``Options.of(settings)``).
    """

    __slots__ = ("_dumps", "_translate", "integrations", "line", "options", "topics")

    def __init__(
        self,
        topics: Sequence[str] = TOPIC_NAMES,
        *,
        line: bool = False,
        integrations: Mapping[str, str] | None = None,
        options: Options | None = None,
    ) -> None:
        if len(topics) != len(TOPIC_NAMES):
            raise ValueError(f"need {len(TOPIC_NAMES)} topic names, got {list(topics)}")
        self.topics = tuple(topics)
        self.line = line
        self.integrations = tuple((integrations or {}).items())
        self.options = options
        self._translate: Any = None
        if self.integrations:  # imported only when used: start-up time of process-file
            from .. import integrations as translations

            self.options = options or translations.Options()
            self._translate = translations
        self._dumps: Callable[[Any], bytes] = codec.dumps_line if line else codec.dumps

    def records(self, outputs: Iterable[Output], engine: Engine | None = None) -> list[Record]:
        """The records to write for the outputs of one engine step, in order.

        ``engine``: the engine that made the step, as it is right after it
        (before its next record), for what must be looked up in its state;
        the outputs themselves need none. The partition is left None: the
        sender applies :func:`partition_for` with the topic's partition count
        (files have none). The step's outputs come first, then each
        integration's records and its dead letters.
        """
        topics = self.topics
        dumps = self._dumps
        dead = DEAD_LETTERS
        if self.integrations and not isinstance(outputs, list):
            outputs = list(outputs)  # read once per integration
        records: list[Record] = [
            (
                topics[topic],
                key if topic == dead or key is None else key.encode(),
                dumps(value),
                None,
            )
            for topic, key, value in outputs
        ]
        if self.integrations and records:
            tr = self._translate
            lookup = None if engine is None else tr.engine_lookup(engine)
            dead_topic = topics[dead]
            for name, topic in self.integrations:
                payloads, letters = tr.translate_keyed(name, outputs, lookup, self.options)
                records += [(topic, device.encode(), dumps(p), None) for device, p in payloads]
                records += [(dead_topic, _key_bytes(k), dumps(dl), None) for k, dl in letters]
        return records


def _key_bytes(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()
