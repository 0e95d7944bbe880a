"""``agentrl view``: a local web page over a run's rollout dumps or an evaluation's episodes.

``agentrl view RUN_OR_EVAL_DIR [MORE_DIRS...] [--port N] [--export report.html]`` serves one page
(no external assets, works offline) with the run's curves, each rollout's groups with their rewards
and advantages, each episode turn by turn and token by token (loss mask, engine and trainer
logprobs and their difference, entropy where recorded), filters, search, and two episodes or two
evaluations side by side. The page's state is in its URL, so a link shows what its sender saw.
``--export`` writes the same page with the data inside, as one HTML file.

* :mod:`agentrl.view.data`: the folders and their files (what the page asks for, as JSON);
* :mod:`agentrl.view.server`: the HTTP server (standard library only);
* :mod:`agentrl.view.export`: the self-contained HTML file;
* ``agentrl/view/assets/``: the page (HTML, CSS, JavaScript; no libraries).

See docs/viewer.md.
"""

from agentrl.view.data import Sources, ViewError

__all__ = ["Sources", "ViewError"]
