"""What the deployment's cache pruning removes (no Docker: a recorded fake client).

The cache holds one version of each image: ``prune_images`` removes the harness's images whose
repository the current run names under a tag it does not name. Repositories the run did not
build (the quantize image and its python-torch base, built by test_quantize_image.py; the
images of test_build_ca.py) are another test's: the deployment leaves them alone.
"""

from __future__ import annotations

from types import SimpleNamespace

from tests.deploy.local import prune_images


class FakeImages:
    def __init__(self, tags: list[list[str]]):
        self.images = [SimpleNamespace(tags=t) for t in tags]
        self.removed: list[str] = []

    def list(self):
        return self.images

    def remove(self, tag):
        self.removed.append(tag)

    def prune(self, filters):
        return {"SpaceReclaimed": 0}


def test_only_outdated_versions_of_the_repositories_this_run_built_are_removed():
    images = FakeImages([
        ["llm-node/gateway:src-new"], ["llm-node/gateway:src-old"],
        ["llm-node-standin/python:3.11.2-standin.new"], ["llm-node-standin/python:3.11.2-standin.old"],
        ["llm-node/quantize:src-abc"], ["llm-node-standin/python-torch:3.11.2-standin.abc"],
        ["llm-node-test/gateway-build-ca:src-abc"], ["someone/else:1.0"],
    ])
    prune_images(SimpleNamespace(images=images),
                 {"llm-node/gateway:src-new", "llm-node-standin/python:3.11.2-standin.new"}, log=lambda _: None)
    assert images.removed == ["llm-node/gateway:src-old", "llm-node-standin/python:3.11.2-standin.old"]


def test_a_test_prunes_its_own_repositories():
    images = FakeImages([["llm-node/quantize:src-new"], ["llm-node/quantize:src-old"],
                         ["llm-node/gateway:src-x"]])
    prune_images(SimpleNamespace(images=images), {"llm-node/quantize:src-new"}, log=lambda _: None)
    assert images.removed == ["llm-node/quantize:src-old"]
