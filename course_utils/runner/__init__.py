"""The instructor's runner (`course-run`): every lesson through papermill, targets checked, a report written."""
