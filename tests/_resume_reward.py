"""A reward that varies between episodes of a random tiny model (for the resume test)."""


def reward(sample):
    ids = sample.response_ids
    return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)
