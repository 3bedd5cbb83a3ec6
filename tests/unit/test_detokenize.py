from mullama.engine.detokenize import IncrementalText, StopMatcher


def test_incremental_text_never_splits_a_character():
    data = "café 😀 日本".encode()
    dec = IncrementalText()
    out = [dec.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + dec.flush() == "café 😀 日本"
    assert all("\ufffd" not in piece for piece in out)


def _run(stops, pieces):
    m = StopMatcher(stops)
    emitted = []
    for p in pieces:
        text, stopped = m.feed(p)
        emitted.append(text)
        if stopped:
            return "".join(emitted), True
    return "".join(emitted) + m.flush(), False


def test_a_character_cut_off_at_the_end_is_dropped_not_replaced():
    sun = "🌞".encode()
    dec = IncrementalText()
    text = "".join(dec.feed(p) for p in (sun, sun, sun[:2]))  # max_tokens cut the third
    assert text + dec.flush() == "🌞🌞"
    assert "\ufffd" not in text
    dec = IncrementalText()  # invalid bytes inside the text still show as U+FFFD
    assert dec.feed(b"a\xffb") + dec.flush() == "a\ufffdb"


def test_stop_split_across_pieces_is_never_emitted():
    text, stopped = _run(["END"], ["Hello E", "N", "D and more"])
    assert (text, stopped) == ("Hello ", True)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    m = StopMatcher(["END"])
    assert m.feed("Hello EN") == ("Hello ", False)
    assert m.feed("ough") == ("ENough", False)


def test_earliest_stop_wins():
    assert _run(["b c", "c"], ["a b c d"]) == ("a ", True)


def test_no_stops_passes_through():
    assert _run([], ["a", "b"]) == ("ab", False)


def test_flush_returns_partial_match_at_end():
    assert _run(["###"], ["x #", "#"]) == ("x ##", False)
