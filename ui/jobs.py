"""Which job belongs to which browser session, so Interrupt stops only the presser's job."""
from __future__ import annotations

import threading

from pipelines.core.jobs import Job


class SessionJobs:
    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Job:
        job = Job()
        with self._lock:
            self._jobs[session] = job
        return job

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]

    def interrupt(self, session: str) -> bool:
        """Cancel this session's running job; True when there was one."""
        job = self._get(session)
        if job is not None:
            job.cancel()
        return job is not None

    def skip(self, session: str) -> bool:
        """End the image this session's job is sampling now and go on with its next batch
        (A1111's Skip); True when there was a job."""
        job = self._get(session)
        if job is not None:
            job.skip()
        return job is not None

    def _get(self, session: str) -> Job | None:
        with self._lock:
            return self._jobs.get(session)


# ------------------------------------------------ jobs still waiting in Gradio's queue
# Gradio offers no public call for these; the queue's own fields are used (gradio 6.31,
# pinned), the way its /cancel route and client-disconnect clean-up use them.
CANCELLED_WAITING = "Interrupted before it started: nothing was generated."


def _waiting_events(blocks):
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return None, []
    return queue, [event for event_queue in queue.event_queue_per_concurrency_id.values() for event in event_queue.queue]


async def cancel_waiting(blocks, session: str) -> int:
    """Drop this session's jobs that are queued and not started; each gets a plain message."""
    from gradio.server_messages import ProcessCompletedMessage

    queue, events = _waiting_events(blocks)
    if queue is None:
        return 0
    removed = []
    async with queue.delete_lock:
        for event in events:
            if event.session_hash == session:
                try:
                    queue.event_queue_per_concurrency_id[event.concurrency_id].queue.remove(event)
                except ValueError:
                    continue  # it started meanwhile: the running job's interrupt stops it
                queue.event_ids_to_events.pop(event._id, None)
                removed.append(event)
    for event in removed:
        queue.send_message(event, ProcessCompletedMessage(output={"error": CANCELLED_WAITING}, success=False))
    return len(removed)


def client_address(request) -> str:
    """Who sent a request: the proxy's forwarded address on a Space (its proxy sets it), else the peer."""
    import os

    forwarded = request.headers.get("x-forwarded-for", "") if os.environ.get("SPACE_ID") else ""
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else ""


def limit_waiting_per_client(blocks, max_waiting: int) -> None:
    """At most max_waiting queued jobs per client address (0: no limit), so one client cannot
    fill the queue. Wraps the queue's push (call after blocks.queue())."""
    queue = blocks._queue
    if not max_waiting:
        return
    push = queue.push

    async def limited_push(body, request, username):
        fn = blocks.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is None or not fn.queue:  # queue=False events (Interrupt) never wait: never limited
            return await push(body, request, username)
        client = client_address(request)
        _, events = _waiting_events(blocks)
        waiting = sum(1 for event in events if event.request is not None and client_address(event.request) == client)
        if waiting >= max_waiting:
            return (False, f"You already have {waiting} job(s) waiting; this host queues up to {max_waiting} per "
                           f"user. Wait for them to finish (or press Interrupt).", "queue_full")
        return await push(body, request, username)

    queue.push = limited_push
