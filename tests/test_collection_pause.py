"""collection_paused: the cyclic collector is off inside, back on after the last of overlapping pauses, and
left off when it was off before."""

import gc
import threading

import pytest

from services.data.collection_pause import collection_paused


@pytest.fixture(autouse=True)
def restore_collection():
    was_enabled = gc.isenabled()
    yield
    (gc.enable if was_enabled else gc.disable)()


def test_a_pause_turns_collection_off_and_back_on_even_when_the_stage_fails():
    gc.enable()
    with pytest.raises(RuntimeError), collection_paused():
        assert not gc.isenabled()
        raise RuntimeError("the stage failed")
    assert gc.isenabled()


def test_overlapping_pauses_on_two_threads_resume_collection_only_when_the_last_ends():
    gc.enable()
    first_inside, second_done, release_first = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with collection_paused():
            first_inside.set()
            release_first.wait(10)

    def second() -> None:
        first_inside.wait(10)
        with collection_paused():
            pass
        seen["after_second"] = gc.isenabled()
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    second_done.wait(10)
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert seen == {"after_second": False}
    assert gc.isenabled()


def test_a_pause_leaves_collection_off_when_it_was_off_before():
    gc.disable()
    with collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
