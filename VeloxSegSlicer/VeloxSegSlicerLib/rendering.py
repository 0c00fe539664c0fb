"""Offscreen PNG of Slicer's own slice views (CT grey, PET heat overlay, lesion outlines) on slicer-core.

The pictures come from Slicer's slice logic (layer blending, colour tables) and its segmentation
displayable manager (outlines), the same code that draws the slice views in the application; only the
Qt view widget is replaced by a plain VTK render window. Needs an OpenGL context: set
VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow on a machine without display. Headless use only.
"""

import numpy as np
import slicer
import vtk

VIEW_NAMES = {"Axial": "Red", "Sagittal": "Yellow", "Coronal": "Green"}


def _renderOneView(scene, appLogic, orientation, ctNode, petNode, segNode, centerRas, size, foregroundOpacity,
                   label):
    renderWindow = vtk.vtkRenderWindow()
    renderWindow.SetOffScreenRendering(1)
    renderWindow.SetSize(size, size)
    renderer = vtk.vtkRenderer()
    renderer.GetActiveCamera().ParallelProjectionOn()
    renderWindow.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers expect one
    interactor.SetRenderWindow(renderWindow)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(appLogic)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)

    nodesBefore = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    sliceLogic = slicer.vtkMRMLSliceLogic()
    sliceLogic.SetMRMLApplicationLogic(appLogic)
    sliceLogic.SetMRMLScene(scene)
    sliceNode = sliceLogic.AddSliceNode(f"VeloxSegRender{VIEW_NAMES[orientation]}")
    appLogic.GetSliceLogics().AddItem(sliceLogic)
    sliceNode.SetOrientation(orientation)
    group.SetMRMLDisplayableNode(sliceNode)

    composite = sliceLogic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(ctNode.GetID())
    composite.SetForegroundVolumeID(petNode.GetID() if petNode is not None else None)
    composite.SetForegroundOpacity(foregroundOpacity)
    sliceLogic.ResizeSliceNode(size, size)
    sliceLogic.FitSliceToBackground()
    sliceNode.JumpSliceByCentering(*centerRas)
    sliceLogic.SnapSliceOffsetToIJK()

    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(sliceLogic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)

    text = vtk.vtkTextActor()
    text.SetInput(label)
    text.GetTextProperty().SetFontSize(max(12, size // 28))
    text.GetTextProperty().SetColor(1.0, 1.0, 1.0)
    text.SetDisplayPosition(8, size - 8 - max(12, size // 28))
    renderer.AddViewProp(text)

    renderWindow.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(renderWindow)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = vtk.vtkImageData()
    image.DeepCopy(grabber.GetOutput())
    # leave the scene as it was: the slice, composite and slice-model nodes of this view go again
    appLogic.GetSliceLogics().RemoveItem(sliceLogic)
    group.SetMRMLDisplayableNode(None)
    sliceLogic.SetMRMLScene(None)
    added = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    for nodeId in reversed([i for i in added if i not in nodesBefore]):
        node = scene.GetNodeByID(nodeId)
        if node is not None:  # None when it went with its owner
            scene.RemoveNode(node)
    renderWindow.Finalize()
    return image


def lesionCenterRas(segNode, tableNode=None):
    """RAS point to centre the views on: the largest lesion's centroid, else the segmentation's centre."""
    if tableNode is not None and tableNode.GetNumberOfRows() > 1:
        table = tableNode.GetTable()
        mtv = [table.GetColumnByName("MTV_mL").GetValue(r) for r in range(table.GetNumberOfRows() - 1)]
        best = int(np.argmax(mtv))
        return tuple(table.GetColumnByName(c).GetValue(best) for c in ("CentroidR_mm", "CentroidA_mm", "CentroidS_mm"))
    if segNode is not None and segNode.GetSegmentation().GetNumberOfSegments() > 0:
        bounds = [0.0] * 6
        segNode.GetRASBounds(bounds)
        if bounds[0] <= bounds[1]:
            return tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3))
    return None


def renderSliceViews(appLogic, ctNode, petNode, segNode, path, centerRas=None, size=400,
                     orientations=("Axial", "Coronal", "Sagittal"), foregroundOpacity=0.5, ctWindowLevel=(400, 40)):
    """Write a PNG with one slice view per orientation, side by side, through ``centerRas``.

    ``appLogic`` is the application logic (HeadlessSlicer.appLogic); ``ctWindowLevel`` (HU) is applied
    to the CT display (soft tissue by default; None keeps the current one). Returns the path.
    """
    scene = ctNode.GetScene()
    if ctWindowLevel is not None:
        ctDisplay = ctNode.GetDisplayNode()
        ctDisplay.AutoWindowLevelOff()
        ctDisplay.SetWindowLevel(*ctWindowLevel)
    if centerRas is None:
        bounds = [0.0] * 6
        ctNode.GetRASBounds(bounds)
        centerRas = tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3))
    if segNode is not None:
        display = segNode.GetDisplayNode()
        display.SetVisibility2DOutline(True)
        display.SetVisibility2DFill(False)
        display.SetSliceIntersectionThickness(2)
    append = vtk.vtkImageAppend()
    append.SetAppendAxis(0)
    for orientation in orientations:
        append.AddInputData(_renderOneView(scene, appLogic, orientation, ctNode, petNode, segNode, centerRas,
                                           size, foregroundOpacity, orientation))
    append.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(append.GetOutputPort())
    writer.Write()
    return path
