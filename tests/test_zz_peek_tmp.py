from tests.test_anthropic_messages import *  # noqa
from tests.test_anthropic_messages import world  # noqa

@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-20241022", "azure/gpt4o-deploy", "fast"])
def test_peek(gateway, upstream, world, model):
    upstream.set_fault("drop_stream")
    got = events(gateway, world, {"model": model, "max_tokens": 64, "messages": HI, "stream": True})
    print("\nPEEK", model, got[-1])
    upstream.reset()
    upstream.set_fault("status", status=400, message="bad thing here")
    r = post(gateway, world, {"model": model, "max_tokens": 64, "messages": HI})
    print("PEEK400", model, r.status_code, r.text)
