// A pack's web extension: the editor imports every .js file of the pack's web folder.
export const name = "lg_compat";
