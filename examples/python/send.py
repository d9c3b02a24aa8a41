"""Calls wechat-notify from Python: one message, a declined user (43101), one batch, a report.

Run it against `cargo run -- serve --sandbox` (see README.md beside this file). The stubs
(`notify/v1/*_pb2*.py`) are generated from proto/notify/v1/notify.proto and
subscriptions.proto with grpcio-tools.
"""

import argparse
import json
import os
import sys
import urllib.request
import uuid

import grpc

from notify.v1 import (
    notify_pb2,
    notify_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
)

# The sandbox's demo user and one of its seed templates (docs/sandbox.md).
DEMO_USER = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"
# A second sandbox user, who declines the subscription below so that WeChat answers 43101.
DECLINING_USER = "oDecliningUser00000000000001"
SECOND_USER = "oSandboxUser0000000000000002"
TEMPLATE = "sandbox-course-reminder"
COURSE_DATA = {"phrase1": "王小二", "date5": "2019年10月1日 15:01", "phrase4": "李老师"}

# Every call gets a deadline: without one a call waits for ever on a stuck connection, and
# BatchSend uses it to stop starting new sends once it has passed.
DEADLINE_SECONDS = 10.0


# The caller's bearer token as call metadata (docs/callers.md); empty when the service is open
# or the caller proves itself with a client certificate.
METADATA = ()


def send_course_reminder(stub, touser, idempotency_key):
    """SendSubscribe to one user; returns the response or raises grpc.RpcError."""
    request = notify_pb2.SendSubscribeRequest(
        touser=touser,
        template_id=TEMPLATE,
        page="pages/course/detail?id=42",
        data=COURSE_DATA,
        # Derive the key from the event that causes the message (here: this run's course
        # reminder), never from the attempt, so that a retry after a timeout reuses it and the
        # service sends the message at most once.
        idempotency_key=idempotency_key,
    )
    return stub.SendSubscribe(request, timeout=DEADLINE_SECONDS, metadata=METADATA)


def wechat_errcode(error):
    """The `wechat-errcode` trailer of a failed call, as an int, or None when WeChat gave none."""
    for key, value in error.trailing_metadata() or ():
        if key == "wechat-errcode":
            return int(value)
    return None


def decline_in_sandbox(sandbox_url, openid):
    """Demo only: record in the sandbox that `openid` declined the template.

    In production this is the user tapping "reject" in wx.requestSubscribeMessage; the sandbox
    otherwise auto-accepts under `serve --sandbox`, so every send would be delivered.
    """
    body = json.dumps({"openid": openid, "template_id": TEMPLATE, "status": "reject"})
    request = urllib.request.Request(
        f"{sandbox_url.rstrip('/')}/sandbox/subscriptions",
        data=body.encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=DEADLINE_SECONDS) as response:
        response.read()


def open_channel(args):
    """A plaintext channel, or TLS when a CA is given (mutual TLS with a client certificate)."""
    if not args.ca_file:
        return grpc.insecure_channel(args.target)

    def read(path):
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca_file),
        private_key=read(args.key_file) if args.key_file else None,
        certificate_chain=read(args.cert_file) if args.cert_file else None,
    )
    return grpc.secure_channel(args.target, credentials)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("NOTIFY_TARGET", "localhost:50051"),
        help="wechat-notify's gRPC address (env NOTIFY_TARGET, default localhost:50051)",
    )
    parser.add_argument(
        "--sandbox-url",
        default=os.environ.get("SANDBOX_URL", "http://127.0.0.1:8089"),
        help="the sandbox's control API, used only to make a user decline "
        "(env SANDBOX_URL, default http://127.0.0.1:8089)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("NOTIFY_TOKEN", ""),
        help="bearer token of a configured caller, sent as `authorization: Bearer ...` "
        "(env NOTIFY_TOKEN; prefer the env var: arguments show in the process list)",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("NOTIFY_CA_FILE", ""),
        help="speak TLS, trusting this CA (PEM) for the service's certificate (env NOTIFY_CA_FILE)",
    )
    parser.add_argument(
        "--cert-file",
        default=os.environ.get("NOTIFY_CERT_FILE", ""),
        help="client certificate (PEM) for mutual TLS (env NOTIFY_CERT_FILE)",
    )
    parser.add_argument(
        "--key-file",
        default=os.environ.get("NOTIFY_KEY_FILE", ""),
        help="private key (PEM) of --cert-file (env NOTIFY_KEY_FILE)",
    )
    args = parser.parse_args()
    if args.token:
        global METADATA
        METADATA = (("authorization", f"Bearer {args.token}"),)
    # Unique per run so that every run really sends; a real caller uses its own event id.
    run = uuid.uuid4().hex[:12]

    with open_channel(args) as channel:
        stub = notify_pb2_grpc.NotifyServiceStub(channel)

        # 1. One message. msgid is a uint64 above 2^53: Python's int holds it exactly.
        key = f"course-42-reminder-{run}"
        sent = send_course_reminder(stub, DEMO_USER, key)
        print(f"sent: msgid={sent.msgid} attempts={sent.attempts} deduplicated={sent.deduplicated}")

        # A retry with the same key (say, after a timeout) is answered from the record.
        again = send_course_reminder(stub, DEMO_USER, key)
        print(f"retried: msgid={again.msgid} deduplicated={again.deduplicated}")

        # 2. A user who declined: FAILED_PRECONDITION with the trailer wechat-errcode: 43101.
        decline_in_sandbox(args.sandbox_url, DECLINING_USER)
        try:
            send_course_reminder(stub, DECLINING_USER, f"course-42-reminder-declined-{run}")
            print("error: the declining user got the message", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            errcode = wechat_errcode(error)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and errcode == 43101:
                # Not retryable: the user must subscribe again in the mini program first.
                print(f"not subscribed: code={error.code().name} wechat-errcode={errcode}")
            else:
                raise

        # 3. One template to many users: one result per recipient, in request order.
        batch = notify_pb2.BatchSendRequest(
            template_id=TEMPLATE,
            data={"date5": "2019年10月1日 15:01", "phrase4": "李老师"},
            recipients=[
                notify_pb2.Recipient(touser=DEMO_USER, data={"phrase1": "王小二"}),
                notify_pb2.Recipient(
                    touser=SECOND_USER, data={"phrase1": "李小三"}, page="pages/me"
                ),
            ],
            idempotency_key=f"course-42-batch-{run}",
        )
        response = stub.BatchSend(batch, timeout=DEADLINE_SECONDS, metadata=METADATA)
        for result in response.results:
            if result.code == 0:  # the gRPC code SendSubscribe would have answered; 0 is OK
                print(f"  {result.touser}: msgid={result.msgid}")
            else:
                print(f"  {result.touser}: code={result.code} "
                      f"wechat-errcode={result.wechat_errcode} {result.message}")
        print(f"batch: succeeded={response.succeeded} failed={response.failed}")

        # 4. What the mini program got from wx.requestSubscribeMessage, forwarded by its
        # backend as is: the service then knows this user may get one course reminder.
        ledger = subscriptions_pb2_grpc.SubscriptionServiceStub(channel)
        reporting_user = f"oReportingUser-{run}"
        wx_result = {"errMsg": "requestSubscribeMessage:ok", TEMPLATE: "accept"}
        recorded = ledger.RecordSubscriptions(
            subscriptions_pb2.RecordSubscriptionsRequest(openid=reporting_user, results=wx_result),
            timeout=DEADLINE_SECONDS,
        )
        for entry in recorded.subscriptions:
            status = subscriptions_pb2.SubscriptionStatus.Name(entry.status)
            print(f"recorded: template={entry.template_id} status={status} "
                  f"remaining={entry.remaining}")
        known = ledger.GetSubscriptions(
            subscriptions_pb2.GetSubscriptionsRequest(openid=reporting_user),
            timeout=DEADLINE_SECONDS,
        )
        for entry in known.subscriptions:
            kind = subscriptions_pb2.SubscriptionKind.Name(entry.kind)
            source = subscriptions_pb2.SubscriptionSource.Name(entry.source)
            print(f"known: template={entry.template_id} kind={kind} source={source} "
                  f"remaining={entry.remaining}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
