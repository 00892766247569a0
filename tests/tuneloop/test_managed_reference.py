"""A managed model as a model directory and as registry version tags: what is written reads back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tuneloop.managed.reference import PROVIDERS, ManagedModel, managed_from_tags, managed_tags

ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@given(st.sampled_from(PROVIDERS), ids, st.none() | ids, st.none() | ids)
def test_a_managed_model_reads_back_from_its_version_tags(provider, model, base_model, job_id):
    managed = ManagedModel(provider=provider, model=model, base_model=base_model, job_id=job_id)
    tags = managed_tags(managed)
    assert all(isinstance(value, str) and value for value in tags.values())  # registry tags: non-empty strings
    assert managed_from_tags({**tags, "decision": "deployed"}) == managed


def test_a_self_hosted_version_s_tags_name_no_managed_model():
    assert managed_from_tags({}) is None
    assert managed_from_tags({"decision": "deployed"}) is None
    assert managed_from_tags({"provider": "openai"}) is None  # no model id: nothing to call
    assert managed_from_tags({"provider": "acme", "provider_model": "m"}) is None
