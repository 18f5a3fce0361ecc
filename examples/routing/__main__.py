"""python -m examples.routing: the tutorial's four sends, and the queue each one ran from."""

from examples._worker import worker_process
from examples.routing.tasks import add, app, mul

if __name__ == "__main__":
    with worker_process("examples.routing.tasks:app", "-Q", "foo,feed_task"):
        print(add.delay(3, 3).get(timeout=30))  # default queue: foo
        print(mul.delay(3, 3).get(timeout=30))  # task_routes: feed_task
        print(add.apply_async((3, 3), queue="feed_task", routing_key="mul.feed").get(timeout=30))
        print(mul.apply_async((3, 3), queue="foo", routing_key="task.foooooo").get(timeout=30))
        try:
            add.apply_async((1, 1), queue="foo", routing_key="nowhere")
        except ValueError as exc:  # it would be lost silently elsewhere: here it is refused
            print(f"routing_key='nowhere' -> ValueError: {exc}")
    app.close()
