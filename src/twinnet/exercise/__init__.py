"""``twinnet exercise``: the lesson's 14 classes and functions as exercises a learner
fills in (``skeleton``), and the grader of a learner's file (``grader``), which runs the
learner's code in child processes (``isolation``) on cases chosen to expose typical
mistakes (``cases``), against finite differences of the learner's own forward, the
reference layer and TensorFlow's autodiff (``tf_side``), and names what went wrong
(``hints``). ``learner`` loads a learner's file for ``--layers`` on train, evaluate,
compare and gradcheck."""

from twinnet.exercise.names import NAMES, ORDER

__all__ = ["NAMES", "ORDER"]
