"""The xdist scheduler's group of tests on the session's Ray (tests/conftest.py) is read from the sources: it must be
exactly the collected tests that take ``ray_session``, or a second session Ray starts on the other worker."""

from __future__ import annotations

from conftest import node_ids_on_the_session_ray


def test_the_group_read_from_the_sources_is_every_collected_test_that_takes_ray_session(request):
    on_ray = node_ids_on_the_session_ray()
    assert len(on_ray) >= 20 and all(node.startswith("tests/test_") for node in on_ray)
    for item in request.session.items:
        assert (item.nodeid.split("[")[0] in on_ray) == ("ray_session" in item.fixturenames), item.nodeid


def test_a_test_taking_ray_session_is_found_and_one_that_does_not_is_not(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_on(tmp_path, ray_session):\n    pass\n\n\ndef test_off(tmp_path):\n"
                                        "    ray_session = 1\n")
    (tmp_path / "helpers.py").write_text("def test_elsewhere(ray_session):\n    pass\n")  # not a test module
    assert node_ids_on_the_session_ray(tmp_path) == {f"{tmp_path.name}/test_a.py::test_on"}
