"""The one type of error this project raises on purpose for the user.

    from irevnet_jax.errors import UserError
    raise UserError('model.widths[0]=3 is smaller than bottleneck_mult=4; use widths[0] >= 4.')

A `UserError` says that the input cannot work (a config field, a flag, a path, a data set
that is not prepared, a disk that is full) and its message names the fix. The commands in
experiments/ print it as one line, `Error: <message>`, without a traceback (`--verbose`
shows it); any other exception is a bug and keeps its traceback. An error of a library that
is the user's doing is caught where it happens and raised again as a `UserError` naming the
cause (`raise UserError(...) from error`).

Where callers catch a built-in kind, a subclass derives from both (e.g.
`run.workdir_lock.WorkdirInUse(UserError, BlockingIOError)`, which `experiments.evaluate`
catches as an OSError to report without recording). This module imports nothing of the
package: every layer may raise it.
"""


class UserError(ValueError):
  """A refusal meant for the user; the message (one sentence or two) names the fix."""
