"""``python -m detloss ...`` (what ``torchrun -m detloss train`` runs)."""

from detloss.cli import main

if __name__ == "__main__":
    main()
