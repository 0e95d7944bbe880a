"""A reward function for the viewer's recorded run: the second episode of every group fails (so the
run has failed episodes to filter), the others score 0.5."""


def reward(sample):
    if sample.sample_index == 1:
        raise RuntimeError("flaky scorer: cannot score this episode")
    return 0.5
