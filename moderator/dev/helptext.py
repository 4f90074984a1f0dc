"""The help texts of `moderator dev-stack`, `dev-stack upload` and `dev-stack verdicts`.
Stdlib only: the CLI builds its parsers from these on every start."""

from __future__ import annotations

from moderator.dev.guide import EXAMPLE_TENANT
from moderator.dev.kafka.jars import JARS_ENV, KAFKA_VERSION

BUCKET = "uploads"  # the bucket dev-stack creates and `upload` writes to

DESCRIPTION = f"""\
Start a Kafka broker and an S3 server on loopback for local work. Creates the
bucket '{BUCKET}' (versioned) and the service's topics (kafka.topics.*), prints
one `export NAME=value` line per variable a `moderator` process needs, then
`ready`, and serves until SIGTERM, SIGINT or SIGHUP (exit 0). stdout carries
only the export lines and `ready`; the bucket, the topics and how to send an
upload go to stderr. --env-file FILE also writes the export lines to FILE once
ready (complete at once: written aside, then renamed) and removes it on exit.

--kafka mock (the default) is librdkafka's mock cluster inside this process:
no transactions, so it exports MODERATOR_KAFKA__DELIVERY=at_least_once; its
topics have 4 partitions; it exports MODERATOR_KAFKA__SESSION_TIMEOUT_MS=6000, since
it holds a group its last member left for the session timeout less 1 s (44 s by
default) before a restarted `run` gets partitions. --kafka apache starts a real
Apache Kafka {KAFKA_VERSION} node (needs Java 17+; its jars are resolved once with Maven into
~/.cache/moderator or ${JARS_ENV}), creates the topics from
kafka.topic_specs with one replica, and exports
MODERATOR_KAFKA__DELIVERY=exactly_once.

Ports are free ones the system picks, unless --s3-port N or --kafka-port N
names one (0: pick a free one). --kafka-port works with --kafka apache only:
the mock cluster listens on a port the system picks and librdkafka has no
setting for it. A chosen port that is taken is one line naming the flag, exit 2,
before anything starts. Exit 2 when Java or Maven is missing or a setting is
invalid, 1 when a server cannot start."""

EPILOG = f"""\
examples:
  moderator dev-stack --env-file .dev-stack.env
  moderator dev-stack | sed '/^ready$/q'
  moderator dev-stack --kafka apache --env-file .dev-stack.env
  moderator dev-stack --s3-port 9000 --kafka apache --kafka-port 9092
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT}

local work in one shell (the stack in the background, its environment here, one upload):
  rm -f .dev-stack.env
  moderator dev-stack --env-file .dev-stack.env & stack=$!
  until [ -f .dev-stack.env ]; do sleep 0.2; done; . ./.dev-stack.env
  moderator run --engine fake --policies policies & service=$!
  id=$(moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT})
  moderator dev-stack verdicts "$id"
  kill $service; wait $service; kill $stack"""


UPLOAD_DESCRIPTION = """\
Put FILE into the stack's bucket at T/<file name> (or --key), produce its
UploadEvent v1 to the uploads topic (kafka.topics.uploads) and print the event
id on stdout. Without FILE a generated sample JPEG is sent. --shape announces
the object as AWS would instead: an S3 event notification, an EventBridge
event, or an SNS envelope around one (or around the UploadEvent); the id
printed is the one the service reads. S3's and EventBridge's events carry no
surface: they are judged under 'default'. The addresses come
from the environment `moderator dev-stack` exports
(MODERATOR_KAFKA__BOOTSTRAP_SERVERS, MODERATOR_S3__ENDPOINT_URL, AWS_*). Exit 2
when they are not set or an argument is invalid, 1 when S3 or Kafka fails."""

UPLOAD_EPILOG = f"""\
examples:
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT}
  moderator dev-stack upload --tenant {EXAMPLE_TENANT} --surface profile   # a sample image
  moderator dev-stack upload a.png --tenant {EXAMPLE_TENANT} --key {EXAMPLE_TENANT}/2026/a.png
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT} --shape sns-s3"""

VERDICTS_DESCRIPTION = """\
Read the verdicts topic (kafka.topics.verdicts) from the beginning and print
each verdict as one JSON line. With EVENT_IDs: wait until each has a verdict and
print those (exit 0), or exit 1 after --timeout seconds naming the ids still
missing. Without: print the verdicts on the topic now and exit 0. Needs
MODERATOR_KAFKA__BOOTSTRAP_SERVERS from `moderator dev-stack` (exit 2 without)."""

VERDICTS_EPILOG = """\
examples:
  moderator dev-stack verdicts "$id"
  moderator dev-stack verdicts --timeout 120 dev-0123 dev-4567
  moderator dev-stack verdicts | python3 -m json.tool --json-lines"""
