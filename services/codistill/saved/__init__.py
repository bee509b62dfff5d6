"""The models a run leaves behind: saved, loaded, predicting, exported, and distilled into one student."""
