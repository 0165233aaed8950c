"""The Shapes world (world.py), its model-free checker and ShapesEval: a toy task on which a Harmon trained from
scratch on a CPU can be scored by a program."""
