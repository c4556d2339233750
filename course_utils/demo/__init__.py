"""Lesson 12's capstone: one local web app (Gradio on FastAPI) serving the models the learner built in lessons 05-11.

    make demo                  # full mode: the real models on the GPU, your artefacts where they are on disk
    SMOKE=1 make demo          # the tiny offline stand-ins, on the CPU
    python -m course_utils.demo --help

* :mod:`course_utils.demo.models` — :class:`ModelManager`: load on first use, keep what fits the card's budget,
  free the least recently used, serve one request at a time, turn an OOM into a message;
* :mod:`course_utils.demo.tabs` — :class:`Demo`: what each tab does (input checks, then the lessons' loaders);
* :mod:`course_utils.demo.app` — the FastAPI app with the Gradio UI mounted on it, behind a login;
* :mod:`course_utils.demo.__main__` — the command: binds 127.0.0.1, prints the login, serves.
"""
